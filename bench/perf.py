"""Performance benchmark: per-epoch cost of NFT vs FlowGRPO, harness overhead vs raw compute, peak memory.

    python -m bench.perf --model shapes                 # the shapes world on this machine (CPU or GPU)
    python -m bench.perf --model sd35m --device cuda    # SD3.5-Medium-size transformer + VAE, random weights
    python -m bench.perf --model flux-dev --device cuda  # a family's published transformer + VAE (bench.published)
    python -m bench.perf --methods flowgrpo,grpo-guard,tempflow-grpo    # FlowGRPO's variants

A row counts rollout samples (initial noises, ``images_per_epoch``) and the images decoded and scored
(``scored_images_per_epoch``: the same, except TempFlow-GRPO's S x K branch images per sample).

Each method runs ``--epochs`` epochs through the real trainer (rollout, reward, training) with a small group
(``--prompts`` x ``--images``); the raw model compute is the time of the same number of bare transformer
forwards/backwards at the same batch size, so ``overhead = phase time / raw compute`` is what the harness adds
(adapter switches, sampler arithmetic, reward, bookkeeping). Results are written as a run record like any other
(``results/<run_id>/``, method = the benchmarked method, ablation label "perf:<model>").
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from bench.config import resolve
from bench.cost import family_flops_per_forward, passes_per_image, transformer_flops_per_forward
from bench.published import PUBLISHED
from bench.records import load_results

SD35M_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                         attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                         caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
                         dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
SD35M_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                 layers_per_block=2, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                 shift_factor=0.0609, scaling_factor=1.5035)


def sd35m_random_policy(device):
    """SD3.5-Medium's published transformer and VAE configs with random weights; tiny CLIP encoders with the real
    output widths (pooled 2 x 1024) and T5 replaced by its zero padding (128 tokens): realistic shapes and cost."""
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)

    from rollout.models import PolicyOptions, T2IPolicy, tiny_clip
    from rollout.text import build_word_tokenizer
    from worlds.shapes.prompts import VOCAB

    tok = build_word_tokenizer(VOCAB, max_length=77)
    te1 = tiny_clip(len(tok), tok.eos_token_id, 32, 1024, 1, 77, tok.pad_token_id, tok.bos_token_id)
    te2 = tiny_clip(len(tok), tok.eos_token_id, 32, 1024, 1, 77, tok.pad_token_id, tok.bos_token_id)
    pipe = StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**SD35M_TRANSFORMER), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=AutoencoderKL(**SD35M_VAE), text_encoder=te1, tokenizer=tok, text_encoder_2=te2,
        tokenizer_2=build_word_tokenizer(VOCAB, 77), text_encoder_3=None, tokenizer_3=None)
    fp16 = torch.float16 if torch.device(device).type == "cuda" else None
    policy = T2IPolicy(pipe, PolicyOptions(max_sequence_length=128, autocast_dtype=fp16))
    return policy.to(device)


def published_random_policy(model: str, device):
    """A family's published transformer and VAE with random weights (:func:`bench.published.random_policy`)."""
    from bench.published import random_policy

    return random_policy(model, device)


def family_overrides(model: str) -> list[str]:
    """A published model's LoRA targets and guidance conventions as overrides: FLUX.1-dev runs FlowGRPO without true
    CFG (its guidance embedding; bench.config.FAMILY_PRESETS), a step-distilled release without CFG at all."""
    from bench.config import FAMILY_PRESETS
    from rollout.families import policy_class

    spec = PUBLISHED[model]
    out = [f"lora.target_modules={','.join(policy_class(spec.family).lora_targets)}"]
    guidance = FAMILY_PRESETS.get(spec.family, {}).get("paper", {}).get("flowgrpo.guidance")
    if spec.pipeline_kwargs.get("is_distilled"):
        guidance = 1.0
    if guidance is not None:
        out += [f"flowgrpo.guidance={guidance}", f"flowgrpo.eval_guidance={guidance}"]
    return out


def raw_compute_s(policy, batch: int, resolution: int, forwards: int, backwards: int) -> float:
    """Seconds of bare transformer work: ``forwards`` no-grad forwards and ``backwards`` forward+backward passes."""
    shape = policy.latent_shape(resolution, resolution)
    x = torch.randn(batch, *shape, device=policy.device)
    cond = policy.encode(["a photo of a red circle"] * batch)
    sync = torch.cuda.synchronize if policy.device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        policy.velocity(x, 0.5, cond)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(forwards):
            policy.velocity(x, 0.5, cond)
    for _ in range(backwards):
        params = [p for p in policy.transformer.parameters() if p.requires_grad]
        v = policy.velocity(x, 0.5, cond, integer_timestep=False)
        torch.autograd.grad(v.float().pow(2).mean(), params, allow_unused=True)
    sync()
    return time.perf_counter() - t0


def run(model: str, methods: list[str], epochs: int, prompts: int, images: int, batch: int, device: str, out: str,
        steps: int) -> list[dict]:
    from bench.trainer import Trainer

    rows = []
    for method in methods:
        policy = (sd35m_random_policy(device) if model == "sd35m" else
                  published_random_policy(model, device) if model in PUBLISHED else None)
        resolution = 32 if model == "shapes" else 512
        overrides = [f"prompts_per_epoch={prompts}", f"images_per_prompt={images}", f"rollout_batch_size={batch}",
                     f"nft.train_batch_size={batch}", f"flowgrpo.train_batch_size={batch}", "eval_every=0",
                     "reward=brightness", f"resolution={resolution}", f"out={out}", "tensorboard=false",
                     f"ablation=perf:{model}", f"nft.num_steps={steps}", f"flowgrpo.num_steps={steps}",
                     f"awm.train_batch_size={batch}", f"awm.num_steps={steps}",
                     f"dgpo.train_batch_size={batch}", f"dgpo.num_steps={steps}",
                     f"device={device}", "budget_wall_s=0"]
        if model == "sd35m":
            overrides += ["lora.rank=32", "lora.alpha=64"]
        if model in PUBLISHED:
            overrides += ["lora.rank=32", "lora.alpha=64", *family_overrides(model)]
        cfg = resolve({"method": method, "seed": 0, "epochs": epochs}, None, overrides)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        trainer = Trainer(cfg, policy=policy)
        result = trainer.run()
        df = load_results(out)
        df = df[df.run_id == result["run_id"]]
        per_epoch = df[df.epoch >= 1].groupby("key").value.mean()  # epoch 0 includes warm-up
        counts = passes_per_image(method, cfg)
        n_img = prompts * images
        # CFG runs the conditional and unconditional halves as ONE forward at twice the batch: time it that way
        guidance = getattr(trainer.method_cfg, "guidance", getattr(trainer.method_cfg, "rollout_guidance", 1.0))
        cfg_mult = 2 if (method != "nft" and guidance != 1.0) else 1
        raw_batch = batch * cfg_mult
        fwd = int(round(counts.rollout_forward * n_img / raw_batch))
        trn_f = int(round((counts.train_forward - counts.train_backward) * n_img / raw_batch))
        trn_b = int(round(counts.train_backward * n_img / raw_batch))
        raw_roll = raw_compute_s(trainer.policy, raw_batch, resolution, fwd, 0)
        raw_train = raw_compute_s(trainer.policy, raw_batch, resolution, trn_f, trn_b)
        params = sum(p.numel() for p in trainer.policy.transformer.parameters())
        if model in PUBLISHED:
            flops = family_flops_per_forward(model, resolution)
        else:
            t = trainer.policy.transformer.config
            tokens = (resolution // (8 if trainer.policy.vae is not None else 1) // t.patch_size) ** 2
            flops = transformer_flops_per_forward(params, tokens, 205 if model == "sd35m" else 20, t.num_layers,
                                                  t.num_attention_heads * t.attention_head_dim)
        row = {"model": model, "method": method, "device": torch.cuda.get_device_name() if device.startswith("cuda")
               else "cpu", "images_per_epoch": n_img, "scored_images_per_epoch": n_img * counts.images,
               "params_M": params / 1e6,
               "rollout_s": per_epoch.get("time/rollout_s"), "train_s": per_epoch.get("time/train_s"),
               "reward_wait_s": per_epoch.get("time/reward_wait_s"), "raw_rollout_s": raw_roll,
               "raw_train_s": raw_train, "overhead_rollout": per_epoch.get("time/rollout_s") / raw_roll,
               "overhead_train": per_epoch.get("time/train_s") / max(raw_train, 1e-9),
               "forward_equivalents_per_image": counts.forward_equivalents, "flops_per_forward": flops,
               "achieved_tflops": counts.forward_equivalents * flops * n_img
               / (per_epoch.get("time/rollout_s") + per_epoch.get("time/train_s")) / 1e12,
               "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
               "run_id": result["run_id"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del trainer, policy
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Per-epoch cost of each method and the harness overhead ratio.")
    ap.add_argument("--model", choices=["shapes", "sd35m", *PUBLISHED], default="shapes",
                    help="Shapes world, an SD3.5-Medium-size random model, or a family's published architecture with "
                         "random weights (bench.published: flux-dev, flux-schnell, qwen-image, z-image, flux2-klein).")
    ap.add_argument("--methods", default="nft,flowgrpo",
                    help="Comma-separated methods to benchmark (nft, flowgrpo, flowgrpo-fast, grpo-guard, "
                         "tempflow-grpo, awm, dgpo).")
    ap.add_argument("--epochs", type=int, default=3, help="Epochs per method (the first is treated as warm-up).")
    ap.add_argument("--prompts", type=int, default=4, help="Prompts per epoch.")
    ap.add_argument("--images", type=int, default=8, help="Images per prompt.")
    ap.add_argument("--batch", type=int, default=8, help="Sampling and training micro-batch size.")
    ap.add_argument("--steps", type=int, default=10, help="Sampler steps.")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="Torch device.")
    ap.add_argument("--out", default="results", help="Results root for the run records.")
    ap.add_argument("--json", default=None, help="Also write the summary rows to this JSON file.")
    args = ap.parse_args(argv)
    rows = run(args.model, args.methods.split(","), args.epochs, args.prompts, args.images, args.batch, args.device,
               args.out, args.steps)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
