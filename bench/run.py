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
from pathlib import Path

from bench.cli import below_minimum, check_world, distinct_items, existing_file
from bench.config import RunConfig, resolve
from bench.records import check_run_id

FLAGS = {
    # flag: (config key, type, help)
    "world": ("world", str, "World: 'shapes' (built-in CPU testbed, default) or a path / hub id of a saved pipeline "
                            "(SD3 / SD3.5, FLUX.1, FLUX.2 klein, Qwen-Image, Z-Image) such as "
                            "stabilityai/stable-diffusion-3.5-medium for paper-scale runs."),
    "task": ("task", str, "Paper preset (prompt sets and hyperparameters): geneval, ocr, pickscore, hpsv2 or "
                          "multi_reward. Ignored by the shapes world, which has its own tuned preset."),
    "reward": ("reward", str, "Reward name or weighted spec such as 'pickscore:1,hpsv2:1'; paper names are mapped to "
                              "the world's implementation (geneval -> shapes_geneval in the shapes world)."),
    "eval-reward": ("eval_reward", str, "Reward that scores evaluation images, e.g. 'brightness' for a tiny model; "
                                        "by default the world's GenEval."),
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


# setting: (lowest valid value, what to give instead). Checked on the resolved config, so a flag, a --config file and
# a key=value override are held to the same limits.
LIMITS: dict[str, tuple[float, str]] = {
    "seed": (0, "a non-negative integer seed"),
    "epochs": (1, "the maximum number of epochs per run, at least 1"),
    "budget_wall_s": (0, "seconds of training wall-clock, or 0 for no limit"),
    "budget_gpu_hours": (0, "device-hours, or 0 for no limit"),
    "budget_cpu_s": (0, "CPU seconds, or 0 for no limit"),
    "eval_every": (0, "the number of epochs between evaluations, or 0 to disable them"),
    "eval_every_s": (0, "seconds of the training clock between evaluations, or 0 to evaluate every N epochs"),
    "eval_prompts": (0, "the number of test prompts per evaluation, or 0 for all of them"),
    "eval_images_per_prompt": (1, "the number of images per test prompt, at least 1"),
    "eval_steps": (0, "the number of sampler steps of an evaluation, or 0 for the world's"),
    "prompts_per_epoch": (1, "the number of prompts per epoch, at least 1"),
    "images_per_prompt": (1, "the group size (images per prompt), at least 1"),
    "rollout_batch_size": (1, "the number of images per sampling batch, at least 1"),
    "resolution": (0, "an image side in pixels, or 0 for the world's"),
    "checkpoint_every": (1, "the number of epochs between checkpoints, at least 1"),
    "reward_workers": (1, "the number of reward threads, at least 1"),
}
PROMPT_FILE_SUFFIXES = (".jsonl", ".txt")  # a prompt setting ending so names a file (worlds.base.World.prompts)


def method_list(text: str) -> list[str]:
    """``--methods``: comma-separated names of the method registry, each once."""
    from methods.registry import REGISTRY

    methods = distinct_items(text, "nft,flowgrpo,cfg")
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method {unknown[0]!r}; choose from {', '.join(sorted(REGISTRY))}")
    return methods


def seed_list(text: str) -> list[int]:
    """``--seeds``: comma-separated non-negative integers, each once."""
    seeds = distinct_items(text, "0,1,2")
    bad = [s for s in seeds if not (s.isascii() and s.isdigit())]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad[0]!r} is not a non-negative integer; give seeds such as 0,1,2")
    return [int(s) for s in seeds]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--methods", type=method_list, default="nft,flowgrpo,cfg",
                    help="Comma-separated methods to compare under the same budget: nft, flowgrpo, flowgrpo-fast, "
                         "grpo-guard, tempflow-grpo, awm, dgpo, dgpo-wocfg, dgpo-wocfg-emaref, cfg (the CFG baseline: "
                         "evaluation only).")
    ap.add_argument("--seeds", type=seed_list, default="0",
                    help="Comma-separated seeds; every method runs once per seed.")
    for flag, (_, typ, text) in FLAGS.items():
        ap.add_argument(f"--{flag}", type=typ, default=None, help=text)
    ap.add_argument("--config", type=existing_file, default=None,
                    help="JSON or YAML file of settings (nested sections or dotted keys) applied after the preset and "
                         "before key=value overrides.")
    ap.add_argument("--no-report", action="store_true", help="Do not regenerate the report after the runs.")
    ap.add_argument("--report-out", default=None, help="Report folder; default <out>/../reports/out or reports/out.")
    ap.add_argument("--print-config", action="store_true", help="Print the resolved config of each run and exit.")
    ap.add_argument("overrides", nargs="*", help="Settings as key=value with dotted paths, e.g. nft.nft_beta=0.1 "
                                                 "optim.lr=1e-3 lora.rank=16 flowgrpo.kl_beta=0.01.")
    return ap


def setting_name(key: str) -> str:
    """How an error names a setting: with its flag when it has one (``--epochs (setting epochs)``)."""
    flag = next((flag for flag, (name, _, _) in FLAGS.items() if name == key), None)
    return f"--{flag} (setting {key})" if flag else f"setting {key}"


def check_config(cfg: RunConfig) -> None:
    """Refuse what would fail or mislead later, before a model loads or a folder is made: values below their
    :data:`LIMITS`, an unknown reward, a world or a file that does not exist, a run id unfit as a folder name.
    Raises ``ValueError`` naming the setting (and its flag) and the fix."""
    from rewards import parse_reward_spec

    for key, (minimum, meaning) in LIMITS.items():
        complaint = below_minimum(getattr(cfg, key), minimum, meaning)
        if complaint:
            raise ValueError(f"{setting_name(key)}: {complaint}")
    checks = [("world", check_world), ("reward", parse_reward_spec)]
    if cfg.eval_reward:  # empty: the world's own evaluation reward
        checks.append(("eval_reward", parse_reward_spec))
    if cfg.run_id:  # empty: the trainer makes a new one
        checks.append(("run_id", check_run_id))
    for key, check in checks:
        try:
            check(getattr(cfg, key))
        except ValueError as err:
            raise ValueError(f"{setting_name(key)}: {err}") from None
    files = {"train_prompts": cfg.train_prompts.endswith(PROMPT_FILE_SUFFIXES),
             "test_prompts": cfg.test_prompts.endswith(PROMPT_FILE_SUFFIXES),
             "reward_schedule": bool(cfg.reward_schedule)}
    for key, names_a_file in files.items():
        if names_a_file and not Path(getattr(cfg, key)).is_file():
            raise ValueError(f"{setting_name(key)}: no file {getattr(cfg, key)}; fix the path")
    if cfg.world != "shapes":  # the paper-scale prompt sets are downloaded, not shipped: say so before loading
        from rollout.datasets import SETS, prompts_dir
        from worlds import load_world

        world = load_world(cfg.world, cfg.task)
        for key, default in (("train_prompts", world.train_set), ("test_prompts", world.test_set)):
            name = getattr(cfg, key) or default
            local = prompts_dir() / SETS[name].local if name in SETS else None
            if local is not None and not local.is_file():
                raise ValueError(f"{setting_name(key)}: prompt set '{name}' is not at {local}; "
                                 f"fetch it with `python -m rollout.datasets fetch {name}` (or set FLOWRL_PROMPTS_DIR, "
                                 f"or give {key}=<your .jsonl or .txt file>)")


def configs_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> list[RunConfig]:
    """One resolved and checked config per (seed, method).

    A user error (bad setting, value or file) raises ``ValueError``/``KeyError`` naming the flag or setting; with
    ``parser`` it is printed as one ``error:`` line after the usage instead, and the process exits with code 2."""
    try:
        return _resolve_all(args)
    except (KeyError, ValueError) as err:
        if parser is None:
            raise
        parser.error(err.args[0] if isinstance(err, KeyError) else str(err))


def _resolve_all(args: argparse.Namespace) -> list[RunConfig]:
    base = {key: getattr(args, flag.replace("-", "_")) for flag, (key, _, _) in FLAGS.items()
            if getattr(args, flag.replace("-", "_")) is not None}
    runs = len(args.methods) * len(args.seeds)
    if base.get("run_id") and runs != 1:
        raise ValueError(f"--run-id names one run, but --methods and --seeds give {runs}: pass a single method and "
                         "a single seed with --run-id, or drop --run-id")
    configs = [resolve({**base, "method": m, "seed": s}, args.config, args.overrides)
               for s in args.seeds for m in args.methods]
    for cfg in configs:
        check_config(cfg)
    return configs


def budget_text(cfg: RunConfig) -> str:
    """The run's budget in words for its header line (``240 s wall-clock``, ``no budget``)."""
    parts = [f"{cfg.budget_wall_s:g} s wall-clock" if cfg.budget_wall_s else "",
             f"{cfg.budget_cpu_s:g} CPU s" if cfg.budget_cpu_s else "",
             f"{cfg.budget_gpu_hours:g} device-hours" if cfg.budget_gpu_hours else ""]
    return ", ".join(p for p in parts if p) or "no budget"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    configs = configs_from_args(args, parser)
    if args.print_config:
        for cfg in configs:
            print(json.dumps(asdict(cfg), indent=2))
        return []
    from bench.distributed import init_distributed, local_device
    from bench.progress import interactive, library_progress_bars
    from bench.trainer import Trainer, headline_eval

    library_progress_bars(interactive())  # model-loading bars only on a terminal, not in a log file
    # torchrun / submitit: join the process group before any Trainer exists; each rank trains on its own GPU
    _, rank, local_rank = init_distributed()
    summaries = []
    for cfg in configs:
        cfg.device = local_device(local_rank, cfg.device)
        t0 = time.time()
        print(f"== {cfg.method} | world {cfg.world} | reward {cfg.reward} | seed {cfg.seed} | "
              f"epochs <= {cfg.epochs} | budget {budget_text(cfg)}", flush=True)
        result = Trainer(cfg).run()
        result.update(method=cfg.method, seed=cfg.seed, total_s=time.time() - t0)
        summaries.append(result)
    print("\nsummary (final evaluation, strict GenEval accuracy where available):")
    for r in summaries:
        score = headline_eval(r["final"])
        score = float("nan") if score is None else score
        print(f"  {r['method']:14s} seed {r['seed']}  epochs {r['epochs']:4d}  train wall {r['wall_s']:7.1f} s  "
              f"final {score:.4f}  -> {configs[0].out}/{r['run_id']}")
    if not args.no_report and rank == 0:  # one writer for the report folder
        from reports.build import build

        out = Path(args.report_out or "reports/out")
        build(Path(configs[0].out), out)
        print(f"report: {out / 'report.md'}")
    return summaries


if __name__ == "__main__":
    main(sys.argv[1:])
