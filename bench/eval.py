"""The evaluation protocol every method shares, so Table-1-style rows come out of one piece of code.

Generate ``images_per_prompt`` images for each prompt of a test set with a deterministic sampler (default: Euler
ODE, the references' in-training eval), score them with the world's evaluation reward, and aggregate. The initial
noise of image j of prompt i depends only on ``seed``, so a method, the base model and a CFG baseline are compared
on the same noise.

    python -m bench.eval --model shapes --guidance 1.0          # base model, no CFG
    python -m bench.eval --model shapes --guidance 4.5          # CFG baseline
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import torch

from bench.cli import at_least, check_world, output_file
from bench.progress import interactive, library_progress_bars, phase_bar
from rollout.families.base import FlowPolicy
from rollout.prompts import PromptSet
from rollout.samplers import Solver, sample


@dataclass
class EvalConfig:
    """Evaluation protocol."""

    images_per_prompt: int = 4
    """Images per test prompt (GenEval protocol: 4)."""
    num_steps: int = 10
    """Sampler steps (references' in-training eval on SD3.5-M: 40; the shapes world: 10)."""
    guidance: float = 1.0
    """Classifier-free guidance scale; 1.0 = no CFG (one forward)."""
    solver: Solver = "euler"
    """Deterministic solver for evaluation."""
    seed: int = 1234
    """Seed of the initial noise, shared by every model evaluated."""
    batch_size: int = 64
    """Images per forward batch (memory only: results do not depend on it beyond float noise)."""
    max_prompts: int | None = None
    """Evaluate only N evenly spaced prompts of the set (smoke tests, in-training evals)."""
    height: int = 32
    width: int = 32


@torch.no_grad()
def generate(policy: FlowPolicy, prompts: list[str], cfg: EvalConfig, progress: bool = False) -> torch.Tensor:
    """Images [N * K, 3, H, W] in [0, 1], ordered prompt-major (image j of prompt i at i * K + j)."""
    shape = policy.latent_shape(cfg.height, cfg.width)
    g = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn((len(prompts) * cfg.images_per_prompt, *shape), generator=g)
    flat_prompts = [p for p in prompts for _ in range(cfg.images_per_prompt)]
    sig = policy.sigmas(cfg.num_steps, cfg.height, cfg.width)
    out = []
    starts = range(0, len(flat_prompts), cfg.batch_size)
    for i in phase_bar(starts, "eval", progress):
        batch = flat_prompts[i:i + cfg.batch_size]
        cond = policy.encode(batch)
        x = noise[i:i + cfg.batch_size].to(policy.device)
        res = sample(lambda x_, s: policy.velocity(x_, s, cond, guidance=cfg.guidance), x, sig, cfg.solver)
        out.append(policy.decode(res.x0).cpu())
    return torch.cat(out)


def evaluate(policy: FlowPolicy, prompt_set: PromptSet, reward, cfg: EvalConfig, progress: bool = False) -> dict:
    """Generate and score; returns ``{"rows": per-image dicts, "report": aggregate, "eval_s": seconds}``.

    ``reward`` is an evaluation reward returning per-image keys (for GenEval: ``accuracy``, ``strict_accuracy``
    and the training score). With GenEval metadata the report holds per-tag numbers, the official 6-tag mean and
    the per-image mean, labelled (``rewards.geneval.evaluation_report``).
    """
    t0 = time.perf_counter()
    idx = list(range(len(prompt_set)))
    if cfg.max_prompts is not None and cfg.max_prompts < len(idx):  # evenly spaced: files may be sorted by tag
        idx = [round(i * len(idx) / cfg.max_prompts) for i in range(cfg.max_prompts)]
    prompts, metadata = [prompt_set.prompts[i] for i in idx], [prompt_set.metadata[i] for i in idx]
    images = generate(policy, prompts, cfg, progress)
    flat_p = [p for p in prompts for _ in range(cfg.images_per_prompt)]
    flat_m = [m for m in metadata for _ in range(cfg.images_per_prompt)]
    rows = []
    for i in range(0, len(flat_p), 256):
        scores = reward(images[i:i + 256], flat_p[i:i + 256], flat_m[i:i + 256])
        for j in range(len(flat_p[i:i + 256])):
            row = {k: float(v[j]) for k, v in scores.items()}
            row["tag"] = flat_m[i + j].get("tag", "all")
            name = getattr(reward, "name", None)
            if name in row:  # a reward's own key is its training score
                row.setdefault("score", row[name])
            rows.append(row)
    if all("strict_accuracy" in r for r in rows):
        from rewards.geneval import evaluation_report
        report = evaluation_report(rows)
    else:
        keys = [k for k in rows[0] if k != "tag"]
        report = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    return {"rows": rows, "report": report, "eval_s": time.perf_counter() - t0, "images": images}


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m bench.eval``; each one's type refuses values that cannot work."""
    ap = argparse.ArgumentParser(prog="python -m bench.eval",
                                 description="Evaluate a model on a world's test prompts with the shared protocol.")
    ap.add_argument("--model", default="shapes", help="World name ('shapes') or a path / hub id of a saved pipeline "
                                                      "(SD3, FLUX.1, FLUX.2 klein, Qwen-Image, Z-Image).")
    ap.add_argument("--guidance", type=at_least(0.0, "a CFG scale >= 0 (1.0 means no CFG)", float), default=1.0,
                    help="CFG scale; 1.0 means no classifier-free guidance.")
    ap.add_argument("--num-steps", type=at_least(1, "a number of sampler steps, at least 1"), default=None,
                    help="Sampler steps; default: the world's eval steps.")
    ap.add_argument("--images-per-prompt", type=at_least(1, "a number of images per prompt, at least 1"), default=4,
                    help="Images generated per test prompt.")
    ap.add_argument("--max-prompts", type=at_least(1, "a number of prompts, at least 1 (omit it for all)"),
                    default=None, help="Evaluate only N evenly spaced test prompts.")
    ap.add_argument("--seed", type=at_least(0, "a non-negative integer seed"), default=1234,
                    help="Seed of the initial noise.")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="Torch device.")
    ap.add_argument("--json", type=output_file, default=None, help="Also write the report to this JSON file.")
    return ap


def main(argv: list[str] | None = None) -> None:
    from worlds import load_world

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_world(args.model)
    except ValueError as err:
        parser.error(f"--model: {err}")
    library_progress_bars(interactive())
    world = load_world(args.model)
    policy = world.load_policy(device=args.device)
    cfg = EvalConfig(images_per_prompt=args.images_per_prompt, num_steps=args.num_steps or world.eval_steps,
                     guidance=args.guidance, seed=args.seed, max_prompts=args.max_prompts,
                     height=world.resolution, width=world.resolution)
    result = evaluate(policy, world.test_prompts(), world.eval_reward(), cfg, progress=True)
    from rewards.geneval import format_report
    print(format_report(result["report"]) if "per_image_mean" in result["report"] else result["report"])
    print(f"({len(result['rows'])} images, {result['eval_s']:.1f} s, guidance {args.guidance})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result["report"], f, indent=2)


if __name__ == "__main__":
    main()
