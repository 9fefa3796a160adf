"""Submit a grid of runs as one SLURM array job through submitit: one array task per (method, reward, seed).

    python -m slurm.submit --methods nft,flowgrpo --seeds 0,1,2 --reward geneval --budget-gpu-hours 8 \\
        --world /models/sd3.5-medium --task geneval --partition gpu --nodes 1 --gpus-per-node 8 --time-min 1440
    python -m slurm.submit ... --dry-run          # print every resolved config and the sbatch script, submit nothing
    python -m slurm.status --folder slurm_jobs --results results

Run flags and ``key=value`` overrides are bench.run's (same parser). Each task is a multi-GPU job (one process per
GPU, ``nodes x gpus_per_node`` ranks) running the Trainer under a fixed run id derived from (method, reward, seed,
grid name), so a task requeued after preemption or a timeout, or a grid submitted again, resumes its own run from
the last epoch checkpoint. Runs that finished (a ``done`` marker beside ``summary.json``) are skipped.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import submitit

from bench.config import RunConfig, flatten, set_path
from bench.records import make_run_id

DONE_FILE = "done"
MANIFEST = "grid.jsonl"
# settings that name a run rather than change what it computes: left out of the default grid name
_IDENTITY_KEYS = ("method", "seed", "run_id", "out", "device")


# ------------------------------------------------------------------------------------------------ the task
def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from ``asdict(cfg)`` (what travels in the submitit pickle) with type checking."""
    cfg = RunConfig()
    for key, value in flatten(values).items():
        set_path(cfg, key, value)
    return cfg


def run_is_done(out: str | Path, run_id: str) -> bool:
    """A run finished when its summary exists and the task that ran it wrote the ``done`` marker afterwards.

    summary.json alone is not enough: the Trainer writes it whenever it closes, including after an exception.
    """
    run_dir = Path(out) / run_id
    return (run_dir / "summary.json").exists() and (run_dir / DONE_FILE).exists()


def load_factory(spec: str) -> Callable[[], Any]:
    """``"package.module:function"`` -> the function (e.g. ``tests.tiny:tiny_policy`` for a tiny policy)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"policy factory {spec!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module), name)


class TrainTask(submitit.helpers.Checkpointable):
    """One array task: every rank of a (multi-GPU, multi-node) job runs this with the same resolved config.

    Checkpointable: on preemption or timeout submitit calls :meth:`checkpoint` and requeues the same call; the
    Trainer checkpoints atomically every epoch under the fixed run id, so the requeued task resumes exactly.
    ``policy_factory`` ("module:function") builds the policy instead of the world's model (tests: a tiny model).
    """

    def __init__(self, policy_factory: str = "") -> None:
        self.policy_factory = policy_factory

    def __call__(self, cfg_dict: dict[str, Any]) -> dict[str, Any]:
        from bench.distributed import barrier, init_distributed, local_device, shutdown_distributed
        from bench.trainer import Trainer

        cfg = config_from_dict(cfg_dict)
        if run_is_done(cfg.out, cfg.run_id):  # a requeue or resubmission of a finished run does nothing
            return {"run_id": cfg.run_id, "skipped": True}
        _, rank, local_rank = init_distributed()
        cfg.device = local_device(local_rank, cfg.device)
        policy = load_factory(self.policy_factory)() if self.policy_factory else None
        result = Trainer(cfg, policy=policy).run()
        barrier()  # every rank finished its last step before the run is declared done
        if rank == 0:
            (Path(cfg.out) / cfg.run_id / DONE_FILE).write_text(json.dumps(result, default=str))
        shutdown_distributed()
        return result

    def checkpoint(self, cfg_dict: dict[str, Any]) -> submitit.helpers.DelayedSubmission:
        """Requeue the same task; the Trainer's own epoch checkpoint carries the state, so nothing else is saved."""
        return submitit.helpers.DelayedSubmission(self, cfg_dict)


# ------------------------------------------------------------------------------------------------ the grid
def grid_name(configs: list[RunConfig]) -> str:
    """A short content hash of the grid's shared settings: the same flags give the same name (and run ids).

    Method and seed are excluded (they are already in the run id), so adding a seed keeps the other runs' ids.
    """
    shared = [{k: v for k, v in flatten(asdict(c)).items() if k not in _IDENTITY_KEYS} for c in configs]
    unique = sorted({json.dumps(s, sort_keys=True, default=str) for s in shared})
    return "g" + hashlib.sha256("\n".join(unique).encode()).hexdigest()[:8]


def assign_run_ids(configs: list[RunConfig], grid: str) -> None:
    """Fixed run ids ``<method>_<reward>_s<seed>_<grid>``: what lets a requeued task find its own checkpoint."""
    for cfg in configs:
        cfg.run_id = make_run_id(cfg.method, cfg.reward, cfg.seed, stamp=grid)
    ids = [c.run_id for c in configs]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"two configs of the grid map to the same run id: {ids}")


def executor_parameters(args: argparse.Namespace, tasks: int) -> dict[str, Any]:
    """submitit parameters (its portable names) for one array task: ``nodes x gpus_per_node`` ranks."""
    params: dict[str, Any] = {
        "name": f"flowrl-{args.grid_name}", "nodes": args.nodes, "tasks_per_node": max(1, args.gpus_per_node),
        "gpus_per_node": args.gpus_per_node, "cpus_per_task": args.cpus_per_task, "timeout_min": args.time_min,
        "slurm_array_parallelism": tasks,
    }
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    slurm_only = {"slurm_partition": args.partition, "slurm_account": args.account, "slurm_qos": args.qos,
                  "slurm_constraint": args.constraint}
    params.update({k: v for k, v in slurm_only.items() if v})
    if args.sbatch_extra:
        params["slurm_additional_parameters"] = dict(_key_value(item) for item in args.sbatch_extra)
    return params


def _key_value(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise SystemExit(f"--sbatch-extra {item!r} must look like KEY=VALUE (e.g. mail-type=END)")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


class _RenderOnlySlurmExecutor(submitit.SlurmExecutor):
    """submitit's own SLURM executor, minus its check that ``srun`` exists: only used to render the sbatch text
    for ``--dry-run`` (it is never asked to submit), so dry runs work on a laptop."""

    @classmethod
    def affinity(cls) -> int:
        return 2


def render_sbatch(folder: Path, params: dict[str, Any], tasks: int) -> str:
    """The sbatch script submitit would write for this array, rendered by submitit's SlurmExecutor itself.

    ``params`` uses AutoExecutor's names; like AutoExecutor, the ``slurm_`` prefix is dropped and the generic names
    (name, timeout_min, mem_gb...) are translated by the SLURM executor's own ``_convert_parameters``.
    """
    slurm = _RenderOnlySlurmExecutor(folder=folder)
    plain = {k.removeprefix("slurm_"): v for k, v in params.items()}
    slurm.update_parameters(**slurm._convert_parameters(plain))
    slurm.parameters["map_count"] = tasks  # what submitit sets when it submits an array
    return slurm._make_submission_file_text(slurm._submitit_command_str, uid="dry-run")


def make_executor(args: argparse.Namespace, tasks: int) -> submitit.Executor:
    """AutoExecutor on SLURM, or submitit's LocalExecutor (``--executor local``: tests and single machines)."""
    params = executor_parameters(args, tasks)
    if args.executor == "local":
        executor = submitit.AutoExecutor(folder=args.folder, cluster="local")
        local = {k: v for k, v in params.items() if not k.startswith("slurm_") and k not in ("mem_gb", "nodes")}
        executor.update_parameters(**local)
        return executor
    executor = submitit.AutoExecutor(folder=args.folder, cluster="slurm")
    executor.update_parameters(**params)
    return executor


# ------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    """bench.run's parser (methods, seeds, reward, budgets, overrides...) plus the cluster's flags."""
    from bench.run import build_parser as run_parser

    ap = run_parser()
    ap.prog = "python -m slurm.submit"
    ap.description = __doc__.split("\n\n")[0]
    ap.epilog = __doc__.split("\n\n", 1)[1]
    g = ap.add_argument_group("cluster")
    g.add_argument("--partition", default=None, help="SLURM partition.")
    g.add_argument("--account", default=None, help="SLURM account to charge.")
    g.add_argument("--qos", default=None, help="SLURM quality of service.")
    g.add_argument("--constraint", default=None, help="SLURM node feature constraint, e.g. h100.")
    g.add_argument("--nodes", type=int, default=1, help="Nodes per array task (multi-node training).")
    g.add_argument("--gpus-per-node", type=int, default=1,
                   help="GPUs per node; one training process per GPU (0: one CPU process per node).")
    g.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores per process (reward workers, decoding).")
    g.add_argument("--mem-gb", type=float, default=0, help="Memory per node in GB (0: the partition's default).")
    g.add_argument("--time-min", type=int, default=240,
                   help="Time limit per task in minutes; a task that reaches it is requeued and resumes.")
    g.add_argument("--sbatch-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="Any other sbatch option, repeatable: --sbatch-extra mail-type=END.")
    g.add_argument("--folder", default="slurm_jobs", help="submitit job folder (scripts, logs, pickles, manifest).")
    g.add_argument("--grid-name", default=None,
                   help="Names the grid in every run id; default a hash of the grid's shared settings.")
    g.add_argument("--executor", choices=("slurm", "local"), default="slurm",
                   help="slurm, or local (submitit's LocalExecutor: processes on this machine).")
    g.add_argument("--policy-factory", default="",
                   help="Build the policy with 'module:function' instead of the world's model (tests: "
                        "tests.tiny:tiny_policy).")
    g.add_argument("--wait", action="store_true", help="Block until every submitted task has ended.")
    g.add_argument("--dry-run", action="store_true",
                   help="Print every resolved config (JSON) and the sbatch script; submit nothing.")
    return ap


def main(argv: list[str] | None = None) -> list[Any]:
    """Resolve the grid, drop finished runs, submit one array; returns the submitted jobs."""
    from bench.run import configs_from_args

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.run_id:
        parser.error("--run-id: slurm.submit derives each run id from (method, reward, seed, grid name); "
                     "drop --run-id (use --grid-name to choose the grid part)")
    configs = configs_from_args(args, parser)
    args.grid_name = args.grid_name or grid_name(configs)
    assign_run_ids(configs, args.grid_name)
    todo = [c for c in configs if not run_is_done(c.out, c.run_id)]
    for cfg in configs:
        state = "done, skipped" if cfg not in todo else "to run"
        print(f"{cfg.run_id}: {cfg.method} | reward {cfg.reward} | seed {cfg.seed} | {state}", flush=True)
    if args.dry_run:
        for cfg in configs:
            print(json.dumps(asdict(cfg), indent=2, sort_keys=True))
        params = executor_parameters(args, max(1, len(todo)))
        print(f"# executor parameters: {json.dumps(params, sort_keys=True)}")
        print(render_sbatch(Path(args.folder), params, max(1, len(todo))))
        return []
    if not todo:
        print("every run of the grid is done: nothing to submit")
        return []
    executor = make_executor(args, len(todo))
    task = TrainTask(args.policy_factory)
    with executor.batch():
        jobs = [executor.submit(task, asdict(cfg)) for cfg in todo]
    _append_manifest(Path(args.folder), args, todo, jobs)
    for cfg, job in zip(todo, jobs):
        print(f"submitted {cfg.run_id} as job {job.job_id}", flush=True)
    if args.wait:
        failed = 0
        for cfg, job in zip(todo, jobs):
            try:
                job.result()
            except Exception as e:  # noqa: BLE001 - report every task, then fail once
                failed += 1
                print(f"{cfg.run_id} failed: {e}", file=sys.stderr)
        if failed:
            raise SystemExit(f"{failed} of {len(jobs)} tasks failed (logs under {args.folder})")
    return jobs


def _append_manifest(folder: Path, args: argparse.Namespace, configs: list[RunConfig], jobs: list[Any]) -> None:
    """One line per submitted task in ``<folder>/grid.jsonl``: what slurm.status lists and maps to job states."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / MANIFEST, "a") as handle:
        for cfg, job in zip(configs, jobs):
            handle.write(json.dumps({"run_id": cfg.run_id, "method": cfg.method, "reward": cfg.reward,
                                     "seed": cfg.seed, "out": cfg.out, "grid": args.grid_name,
                                     "executor": args.executor, "job_id": str(job.job_id),
                                     "epochs": cfg.epochs}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
