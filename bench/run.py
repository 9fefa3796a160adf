"""Run methods under equal budgets on one reward and record everything into results/.

    python -m bench.run                                         # NFT vs FlowGRPO vs CFG on the shapes world (CPU)
    python -m bench.run --methods nft,flowgrpo --reward geneval --budget-wall-s 300
    python -m bench.run --methods nft --world /models/sd3.5-medium --task ocr    # paper scale (GPU)
    python -m bench.run --methods nft nft.nft_beta=0.1 optim.lr=1e-3            # key=value overrides

Each (method, seed) is one run: results/<run_id>/{meta.json, records/part-*.parquet, checkpoint.pt, tensorboard/}.
At the end the report is regenerated from results/ (``python -m reports.build``) and a summary is printed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from bench.config import resolve

FLAGS = {
    # flag: (config key, type, help)
    "world": ("world", str, "World: 'shapes' (built-in CPU testbed, default) or a path / hub id of an SD3 pipeline "
                            "such as stabilityai/stable-diffusion-3.5-medium for paper-scale runs."),
    "task": ("task", str, "Paper preset (prompt sets and hyperparameters): geneval, ocr, pickscore, hpsv2 or "
                          "multi_reward. Ignored by the shapes world, which has its own tuned preset."),
    "reward": ("reward", str, "Reward name or weighted spec such as 'pickscore:1,hpsv2:1'; paper names are mapped to "
                              "the world's implementation (geneval -> shapes_geneval in the shapes world)."),
    "epochs": ("epochs", int, "Maximum number of epochs per run; every method gets the same value."),
    "budget-wall-s": ("budget_wall_s", float, "Equal wall-clock budget per run in seconds of rollout, reward and "
                                              "training (evaluation excluded); 0 means no limit."),
    "budget-gpu-hours": ("budget_gpu_hours", float, "Equal device-hour budget per run (wall-clock x devices, "
                                                    "evaluation excluded); 0 means no limit."),
    "budget-cpu-s": ("budget_cpu_s", float, "Equal CPU-time budget per run in seconds (rollout, reward and "
                                            "training; evaluation excluded): the fair clock when runs share a "
                                            "machine; 0 means no limit."),
    "eval-every-s": ("eval_every_s", float, "Evaluate each time the training clock passes a multiple of this many "
                                            "seconds (CPU seconds with --budget-cpu-s), instead of every N epochs."),
    "eval-every": ("eval_every", int, "Evaluate every N epochs, at epoch 0 and at the end; 0 disables evaluation."),
    "eval-prompts": ("eval_prompts", int, "Number of evenly spaced test prompts per evaluation; 0 means all of them."),
    "out": ("out", str, "Results root folder; each run writes <out>/<run_id>/."),
    "run-id": ("run_id", str, "Resume (or create) this run id; only valid with a single method and seed."),
    "device": ("device", str, "Torch device such as cpu or cuda; by default cuda when available, else cpu."),
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--methods", default="nft,flowgrpo,cfg",
                    help="Comma-separated methods to compare under the same budget: nft, flowgrpo, flowgrpo-fast, cfg.")
    ap.add_argument("--seeds", default="0", help="Comma-separated seeds; every method runs once per seed.")
    for flag, (_, typ, text) in FLAGS.items():
        ap.add_argument(f"--{flag}", type=typ, default=None, help=text)
    ap.add_argument("--config", default=None, help="JSON or YAML file of settings (nested sections or dotted keys) "
                                                   "applied after the preset and before key=value overrides.")
    ap.add_argument("--no-report", action="store_true", help="Do not regenerate the report after the runs.")
    ap.add_argument("--report-out", default=None, help="Report folder; default <out>/../reports/out or reports/out.")
    ap.add_argument("--print-config", action="store_true", help="Print the resolved config of each run and exit.")
    ap.add_argument("overrides", nargs="*", help="Settings as key=value with dotted paths, e.g. nft.nft_beta=0.1 "
                                                 "optim.lr=1e-3 lora.rank=16 flowgrpo.kl_beta=0.01.")
    return ap


def configs_from_args(args) -> list:
    base = {key: getattr(args, flag.replace("-", "_")) for flag, (key, _, _) in FLAGS.items()
            if getattr(args, flag.replace("-", "_")) is not None}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    if base.get("run_id") and len(methods) * len(seeds) != 1:
        raise SystemExit("--run-id names one run: give a single method and a single seed")
    return [resolve({**base, "method": m, "seed": s}, args.config, args.overrides) for s in seeds for m in methods]


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    configs = configs_from_args(args)
    if args.print_config:
        for cfg in configs:
            print(json.dumps(asdict(cfg), indent=2))
        return []
    from bench.distributed import init_distributed, local_device
    from bench.trainer import Trainer

    # torchrun / submitit: join the process group before any Trainer exists; each rank trains on its own GPU
    _, rank, local_rank = init_distributed()
    summaries = []
    for cfg in configs:
        cfg.device = local_device(local_rank, cfg.device)
        t0 = time.time()
        print(f"== {cfg.method} | world {cfg.world} | reward {cfg.reward} | seed {cfg.seed} | "
              f"epochs <= {cfg.epochs} | budget {cfg.budget_wall_s or '-'} s", flush=True)
        result = Trainer(cfg).run()
        result.update(method=cfg.method, seed=cfg.seed, total_s=time.time() - t0)
        summaries.append(result)
    print("\nsummary (final evaluation, strict GenEval accuracy where available):")
    for r in summaries:
        score = r["final"].get("eval/strict_accuracy", r["final"].get("eval/avg_mean", float("nan")))
        print(f"  {r['method']:14s} seed {r['seed']}  epochs {r['epochs']:4d}  train wall {r['wall_s']:7.1f} s  "
              f"final {score:.4f}  -> {configs[0].out}/{r['run_id']}")
    if not args.no_report and rank == 0:  # one writer for the report folder
        from pathlib import Path

        from reports.build import build

        out = Path(args.report_out or "reports/out")
        build(Path(configs[0].out), out)
        print(f"report: {out / 'report.md'}")
    return summaries


if __name__ == "__main__":
    main(sys.argv[1:])
