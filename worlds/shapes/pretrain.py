"""Pretrain the shapes-world base model from scratch (rectified flow, 10 % caption dropout so CFG works).

Runbook (the shipped checkpoint was made with the first line; see worlds/shapes/checkpoint/train_log.jsonl):

    python -m worlds.shapes.pretrain --device cuda --steps 4000 --out runs/shapes_pretrain
    python -m worlds.shapes.pretrain --device cuda --init-from runs/shapes_pretrain/step004000 \
        --step-offset 4000 --batch-size 256 --steps 6000 --eval-every 1000 --out runs/shapes_pretrain
    python -m worlds.shapes.pretrain --device cpu  --steps 9000  --out runs/shapes_pretrain   # ~45-60 min, 2 cores

Data: scenes rendered on the fly from the world's *train* metadata (so prompts are GenEval-formatted) mixed with
randomly captioned scenes, pre-rendered once into memory in seeded chunks (results do not depend on the number of
worker processes). Training: ``t = sigmoid(randn)``, ``x_t = (1 - t) x0 + t eps``, target ``v = eps - x0``, MSE;
the transformer and both text encoders train jointly; AdamW with warm-up; grad-norm clip 1. Every
``--eval-every`` steps the model is evaluated with the shared protocol (bench.eval) without and with CFG 4.5, and
a snapshot is saved, so the checkpoint inside the target band can be picked and reproduced.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bench.eval import EvalConfig, evaluate
from rollout.models import PolicyOptions, T2IPolicy


@dataclass
class PretrainConfig:
    steps: int = 12000
    """Optimizer steps."""
    batch_size: int = 64
    """Images per step."""
    lr: float = 7e-4
    """AdamW peak learning rate (constant after warm-up)."""
    warmup: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    caption_dropout: float = 0.1
    """Probability of training on the empty caption (what makes classifier-free guidance work)."""
    metadata_fraction: float = 0.7
    """Share of training scenes drawn from the train metadata; the rest are randomly captioned scenes."""
    dataset_size: int = 200_000
    """Pre-rendered (image, caption) pairs; steps * batch_size / dataset_size passes over them."""
    seed: int = 0
    eval_every: int = 2000
    eval_prompts: int = 256
    """Test prompts per in-training evaluation (x 2 images)."""
    init_from: str = ""
    """Snapshot folder to continue from ("" = random init). Steps count from 0 again."""
    step_offset: int = 0
    """Added to logged step numbers and snapshot names when continuing from a snapshot."""


CHUNK = 2000


def _render_chunk(args: tuple[int, int, float]) -> tuple[np.ndarray, list[str]]:
    """Render chunk ``index`` of the dataset: deterministic in (seed, index) alone."""
    index, seed, metadata_fraction = args
    from worlds.shapes.prompts import random_caption_scene, scene_for
    from worlds.shapes.scene import render
    from worlds.shapes.world import load_prompts

    train = load_prompts("train").metadata
    rng = np.random.default_rng([seed, index])
    images, captions = np.empty((CHUNK, 32, 32, 3), np.uint8), []
    for i in range(CHUNK):
        if rng.random() < metadata_fraction:
            meta = train[int(rng.integers(len(train)))]
            scene, caption = scene_for(meta, rng), meta["prompt"]
        else:
            scene, caption = random_caption_scene(rng)
        images[i] = render(scene)
        captions.append(caption)
    return images, captions


def build_dataset(cfg: PretrainConfig, workers: int) -> tuple[torch.Tensor, list[str]]:
    n_chunks = math.ceil(cfg.dataset_size / CHUNK)
    jobs = [(i, cfg.seed, cfg.metadata_fraction) for i in range(n_chunks)]
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(j) for j in jobs]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    captions = [c for p in parts for c in p[1]]
    return images, captions


def train(cfg: PretrainConfig, out: Path, device: str, workers: int) -> None:
    from worlds.shapes.world import SHAPES, build_shapes_model, load_prompts
    from worlds.shapes.reward import ShapesGenEvalReward

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    images, captions = build_dataset(cfg, workers)
    print(f"rendered {len(captions)} scenes in {time.time() - t0:.1f} s", flush=True)
    if cfg.init_from:  # continue from a snapshot (fresh optimizer and warm-up): how the shipped model was made
        policy = T2IPolicy.from_pretrained(cfg.init_from, PolicyOptions(max_sequence_length=0), device=device)
    else:
        policy = T2IPolicy(build_shapes_model(seed=cfg.seed), PolicyOptions(max_sequence_length=0))
        policy.to(device)
    encoders = policy.text_encoders
    modules = [policy.transformer, *encoders]
    for m in modules:
        m.train().requires_grad_(True)
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup))
    g = torch.Generator().manual_seed(cfg.seed)
    test = load_prompts("test")
    reward = ShapesGenEvalReward(only_strict=False)
    log = open(out / "train_log.jsonl", "a")
    n_params = sum(p.numel() for p in policy.transformer.parameters())
    print(f"transformer {n_params / 1e6:.2f} M params; {cfg.steps} steps of {cfg.batch_size}", flush=True)
    t_train = time.time()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(len(captions), (cfg.batch_size,), generator=g)
        x0 = (images[idx].permute(0, 3, 1, 2).float() / 127.5 - 1).to(device)
        drop = torch.rand(cfg.batch_size, generator=g) < cfg.caption_dropout
        batch_caps = ["" if d else captions[i] for i, d in zip(idx.tolist(), drop.tolist())]
        t = torch.sigmoid(torch.randn(cfg.batch_size, generator=g)).to(device)
        eps = torch.randn(x0.shape, generator=g).to(device)
        tt = t.view(-1, 1, 1, 1)
        x_t = (1 - tt) * x0 + tt * eps
        cond = policy.encode_uncached(batch_caps)
        v = policy.velocity(x_t, t, cond, integer_timestep=False)
        loss = ((v - (eps - x0)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0:
            rec = {"step": step + cfg.step_offset, "batch_size": cfg.batch_size, "loss": loss.item(),
                   "grad_norm": gn.item(), "lr": sched.get_last_lr()[0], "elapsed_s": time.time() - t_train}
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            for m in modules:
                m.eval()
            snap = out / f"step{step + cfg.step_offset:06d}"
            policy.save_pretrained(snap)
            rec = {"step": step + cfg.step_offset, "elapsed_s": time.time() - t_train}
            for gscale in (1.0, 4.5):
                ecfg = EvalConfig(images_per_prompt=2, num_steps=SHAPES.eval_steps, guidance=gscale,
                                  max_prompts=cfg.eval_prompts, batch_size=256)
                rep = evaluate(policy, test, reward, ecfg)["report"]
                rec[f"cfg{gscale}"] = rep
            policy.clear_cache()
            print(json.dumps({"eval": rec}), flush=True)
            log.write(json.dumps({"eval": rec}) + "\n")
            log.flush()
            for m in modules:
                m.train()
    (out / "pretrain_config.json").write_text(json.dumps(asdict(cfg), indent=2))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Pretrain the shapes-world base model with rectified flow.")
    ap.add_argument("--out", type=Path, default=Path("runs/shapes_pretrain"),
                    help="Output folder for snapshots and the log.")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="Torch device.")
    ap.add_argument("--workers", type=int, default=max(1, (mp.cpu_count() or 2) - 1),
                    help="Processes rendering the dataset.")
    for f, default in asdict(PretrainConfig()).items():
        ap.add_argument(f"--{f.replace('_', '-')}", type=type(default), default=default,
                        help=f"PretrainConfig.{f} (default {default}).")
    args = vars(ap.parse_args(argv))
    out, device, workers = args.pop("out"), args.pop("device"), args.pop("workers")
    train(PretrainConfig(**args), out, device, workers)


if __name__ == "__main__":
    main()
