"""Submit a grid of runs as one SLURM array job through submitit: one array task per (method, reward, seed).

    python -m slurm.submit --methods nft,flowgrpo --seeds 0,1,2 --reward geneval --budget-gpu-hours 8 \\
        --world /models/sd3.5-medium --task geneval --partition gpu --nodes 1 --gpus-per-node 8 --time-min 1440
    python -m slurm.submit ... --dry-run          # print every resolved config and the sbatch script, submit nothing
    python -m slurm.status --folder slurm_jobs --results results

Run flags and ``key=value`` overrides are bench.run's (same parser). Each task is a multi-GPU job (one process per
GPU, ``nodes x gpus_per_node`` ranks) running the Trainer under a fixed run id derived from (method, reward, seed,
grid name), so a task requeued after preemption or a timeout, or a grid submitted again, resumes its own run from
the last epoch checkpoint. Runs that finished (a ``done`` marker beside ``summary.json``) and runs whose job is still
pending, running or being requeued are skipped, so submitting a grid twice never runs a task twice. Before sbatch,
the request is checked against its partition and every reward and prompt set against this machine; a refusal is
one line that names the flag to change and leaves nothing behind.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import io
import json
import os
import shutil
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import submitit

from bench.cli import at_least
from bench.config import RunConfig, flatten, set_path
from bench.records import make_run_id
from bench.runlock import WriterLock, writer_lock
from slurm import scheduler
from slurm.checks import Request, check_resolvable, request_problem, sbatch_refusal
from slurm.tasks import DONE_FILE, MANIFEST, append_manifest, live_tasks, run_is_done, wait, write_done  # noqa: F401

# settings that name a run rather than change what it computes: left out of the default grid name
_IDENTITY_KEYS = ("method", "seed", "run_id", "out", "device")
SIGNAL_DELAY_S = 90
"""submitit's USR2 comes this many seconds before the time limit (``--signal=USR2@90``)."""
_SIGNAL_SLACK_S = 90  # SLURM may send it up to 60 s early (man sbatch, --signal), plus 30 s of margin
MIN_TIME_MIN = 5
TIME_MIN_MEANING = ("the time limit per task in minutes, at least 5: submitit has SLURM signal a task 90 s before its "
                    "limit (SLURM may send it up to 60 s sooner) to requeue it, and a signal that comes before the "
                    "task has started kills it")


# ------------------------------------------------------------------------------------------------ the task
def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from ``asdict(cfg)`` (what travels in the submitit pickle) with type checking."""
    cfg = RunConfig()
    for key, value in flatten(values).items():
        set_path(cfg, key, value)
    return cfg


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
        count_only_real_timeouts()
        _, rank, local_rank = init_distributed()
        held = _hold_run(cfg) if rank == 0 else None  # a duplicate job stops here, before the model loads
        cfg.device = local_device(local_rank, cfg.device)
        policy = load_factory(self.policy_factory)() if self.policy_factory else None
        result = Trainer(cfg, policy=policy).run()
        barrier()  # every rank finished its last step before the run is declared done
        if rank == 0:
            write_done(cfg.out, cfg.run_id, current_job_id(), result)
        shutdown_distributed()
        del held  # the Trainer's recorder shared this lock; it goes with the last holder
        return result

    def checkpoint(self, cfg_dict: dict[str, Any]) -> submitit.helpers.DelayedSubmission:
        """Requeue the same task; the Trainer's own epoch checkpoint carries the state, so nothing else is saved."""
        return submitit.helpers.DelayedSubmission(self, cfg_dict)


def _hold_run(cfg: RunConfig) -> WriterLock:
    """Take the run's writer lock now (the Trainer's recorder shares it): :class:`bench.runlock.RunLockedError` when
    another process writes the run, e.g. a job submitted twice by hand."""
    run_dir = Path(cfg.out) / cfg.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    return writer_lock(run_dir, cfg.run_id)


def current_job_id() -> str | None:
    """The submitit job id of this process (``123_4`` for an array task, as in grid.jsonl), None outside a job."""
    try:
        return str(submitit.JobEnvironment().job_id)
    except Exception:  # noqa: BLE001 - not inside a submitit job (a direct call, a test)
        return None


def count_only_real_timeouts() -> None:
    """Make submitit count a USR2 as a timeout only when the job is close to its time limit.

    submitit calls a signal a timeout once the job has run min(80 %, limit - 10 min) of its limit: with limits of
    10 minutes or less every signal, preemptions included, and in longer slots a preemption in their last fifth.
    Each timeout spends one of ``--max-timeouts`` requeues. SLURM knows the time the job has left: a signal with
    more than the signal delay (plus SLURM's up to 60 s of slack) left is a preemption, and costs nothing.
    """
    job_id = os.environ.get("SLURM_JOB_ID")
    handler = getattr(signal.getsignal(signal.SIGUSR2), "__self__", None)
    if job_id is None or not callable(getattr(handler, "has_timed_out", None)):
        return
    fallback = handler.has_timed_out

    def has_timed_out() -> bool:
        left = scheduler.time_left_s(job_id)
        return fallback() if left is None else left <= SIGNAL_DELAY_S + _SIGNAL_SLACK_S

    handler.has_timed_out = has_timed_out


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


def tasks_per_node(args: argparse.Namespace) -> int:
    """Processes per node: one per GPU, or one CPU process with ``--gpus-per-node 0``."""
    return max(1, args.gpus_per_node)


def executor_parameters(args: argparse.Namespace, tasks: int) -> dict[str, Any]:
    """submitit parameters (its portable names) for one array task: ``nodes x gpus_per_node`` ranks."""
    params: dict[str, Any] = {
        "name": f"flowrl-{args.grid_name}", "nodes": args.nodes, "tasks_per_node": tasks_per_node(args),
        "gpus_per_node": args.gpus_per_node, "cpus_per_task": args.cpus_per_task, "timeout_min": args.time_min,
        "slurm_array_parallelism": tasks, "slurm_signal_delay_s": SIGNAL_DELAY_S,
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
    """The sbatch script submitit would write for these tasks, rendered by submitit's SlurmExecutor itself: an array
    for two tasks or more, a plain job for one (what submitit submits then).

    ``params`` uses AutoExecutor's names; like AutoExecutor, the ``slurm_`` prefix is dropped and the generic names
    (name, timeout_min, mem_gb...) are translated by the SLURM executor's own ``_convert_parameters``.
    """
    slurm = _RenderOnlySlurmExecutor(folder=folder)
    plain = {k.removeprefix("slurm_"): v for k, v in params.items()}
    slurm.update_parameters(**slurm._convert_parameters(plain))
    if tasks > 1:
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
    executor = submitit.AutoExecutor(folder=args.folder, cluster="slurm", slurm_max_num_timeout=args.max_timeouts)
    executor.update_parameters(**params)
    return executor


# ------------------------------------------------------------------------------------------------ checks
def cluster_request(args: argparse.Namespace) -> Request:
    """What one array task asks of SLURM."""
    return Request(partition=args.partition, nodes=args.nodes, tasks_per_node=tasks_per_node(args),
                   cpus_per_task=args.cpus_per_task, gpus_per_node=args.gpus_per_node, mem_gb=args.mem_gb,
                   time_min=args.time_min)


def slurm_missing() -> str | None:
    """Why this machine cannot submit to SLURM (its commands are not installed here), or None."""
    missing = [command for command in ("sbatch", "srun") if shutil.which(command) is None]
    if not missing:
        return None
    return (f"{' and '.join(missing)} not found: submit from a machine of the SLURM cluster, or pass --executor local "
            "to run the grid on this machine")


def partition_problem(args: argparse.Namespace) -> str | None:
    """Why the request can never run on its partition, or None (also when SLURM cannot be asked: sbatch will)."""
    found = scheduler.partitions()
    return None if found is None else request_problem(cluster_request(args), found)


def unresolvable(configs: list[RunConfig]) -> str | None:
    """The first reward or prompt set of the grid that does not resolve on this machine, as an error line."""
    from bench.run import setting_name

    for cfg in configs:
        try:
            check_resolvable(cfg, setting_name)
        except ValueError as err:
            return str(err)
    return None


def refuse(parser: argparse.ArgumentParser, problem: str | None) -> None:
    """Exit with ``problem`` as one ``error:`` line (exit code 2, argparse's convention) when there is one."""
    if problem:
        parser.exit(2, f"{parser.prog}: error: {problem}\n")


# ------------------------------------------------------------------------------------------------ submission
def plan(configs: list[RunConfig], folder: Path) -> list[RunConfig]:
    """The runs to submit: neither finished nor held by a live job (its latest in grid.jsonl, asked of squeue or,
    for local jobs, of its process). Prints one line per run saying which."""
    live = live_tasks(folder, [cfg.run_id for cfg in configs])
    todo = []
    for cfg in configs:
        if run_is_done(cfg.out, cfg.run_id):
            state = "done, skipped"
        elif cfg.run_id in live:
            task, now = live[cfg.run_id]
            state = f"job {task['job_id']} is {now.state}, skipped"
        else:
            state = "to run"
            todo.append(cfg)
        print(f"{cfg.run_id}: {cfg.method} | reward {cfg.reward} | seed {cfg.seed} | {state}", flush=True)
    return todo


@contextlib.contextmanager
def removed_on_failure(folder: Path) -> Iterator[None]:
    """Whatever a failed submission wrote into ``folder`` (sbatch script, pickles, the folder itself) is removed."""
    existed = folder.exists()
    before = set(folder.rglob("*")) if existed else set()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for path in sorted(set(folder.rglob("*")) - before, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        raise


def submit_jobs(args: argparse.Namespace, todo: list[RunConfig]) -> list[Any] | str:
    """Submit ``todo`` as one array (one job for a single run); the jobs, or why sbatch refused them (one line)."""
    flags = {name: getattr(args, name) for name in ("partition", "mem_gb", "constraint", "account", "qos",
                                                    "time_min")}
    try:
        with removed_on_failure(Path(args.folder)), contextlib.redirect_stderr(io.StringIO()):
            executor = make_executor(args, len(todo))
            task = TrainTask(args.policy_factory)
            with executor.batch():
                jobs = [executor.submit(task, asdict(cfg)) for cfg in todo]
    except submitit.core.utils.FailedJobError as err:
        return sbatch_refusal(str(err), flags)
    return jobs


def manifest_entries(args: argparse.Namespace, configs: list[RunConfig], jobs: list[Any]) -> list[dict[str, Any]]:
    """One grid.jsonl line per submitted task: what slurm.status lists and maps to job states."""
    return [{"run_id": cfg.run_id, "method": cfg.method, "reward": cfg.reward, "seed": cfg.seed, "out": cfg.out,
             "grid": args.grid_name, "executor": args.executor, "job_id": str(job.job_id), "epochs": cfg.epochs}
            for cfg, job in zip(configs, jobs)]


def dry_run(args: argparse.Namespace, configs: list[RunConfig], todo: list[RunConfig]) -> None:
    """Print every resolved config, the executor parameters and the sbatch script; and, where SLURM can be asked,
    why the request would be refused."""
    for cfg in configs:
        print(json.dumps(asdict(cfg), indent=2, sort_keys=True))
    count = max(1, len(todo))
    params = executor_parameters(args, count)
    print(f"# executor parameters: {json.dumps(params, sort_keys=True)}")
    print(render_sbatch(Path(args.folder), params, count))
    problem = partition_problem(args) if args.executor == "slurm" else None
    if problem:
        print(f"# this cluster would refuse the request: {problem}")


def wait_and_report(folder: Path, configs: list[RunConfig], poll_s: float) -> None:
    """Block until every submitted task has ended; exit with an error naming the failed ones."""
    ended = wait(folder, [cfg.run_id for cfg in configs], poll_s)
    failed = [f"{task['run_id']} ({state.note or 'failed'})" for task, state in ended if state.state == "failed"]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(ended)} tasks failed: {'; '.join(failed)} (logs under {folder})")


# ------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    """bench.run's parser (methods, seeds, reward, budgets, overrides...) plus the cluster's flags."""
    from bench.run import build_parser as run_parser

    ap = run_parser()
    ap.prog = "python -m slurm.submit"
    ap.description = __doc__.split("\n\n")[0]
    ap.epilog = __doc__.split("\n\n", 1)[1]
    g = ap.add_argument_group("cluster")
    g.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default partition).")
    g.add_argument("--account", default=None, help="SLURM account to charge.")
    g.add_argument("--qos", default=None, help="SLURM quality of service.")
    g.add_argument("--constraint", default=None, help="SLURM node feature constraint, e.g. h100.")
    g.add_argument("--nodes", type=at_least(1, "the number of nodes per task, at least 1"), default=1,
                   help="Nodes per array task (multi-node training).")
    g.add_argument("--gpus-per-node", type=at_least(0, "the number of GPUs per node, or 0 for CPU nodes"), default=1,
                   help="GPUs per node; one training process per GPU (0: one CPU process per node).")
    g.add_argument("--cpus-per-task", type=at_least(1, "the number of CPU cores per process, at least 1"), default=8,
                   help="CPU cores per process (reward workers, decoding).")
    g.add_argument("--mem-gb", type=at_least(0, "memory per node in GB, or 0 for the partition's default", float),
                   default=0, help="Memory per node in GB (0: the partition's default).")
    g.add_argument("--time-min", type=at_least(MIN_TIME_MIN, TIME_MIN_MEANING), default=240,
                   help="Time limit per task in minutes; a task that reaches it is requeued and resumes.")
    g.add_argument("--max-timeouts", type=at_least(0, "how many times a task may reach its time limit"),
                   default=1000, help="How many times a task may reach its time limit and be requeued before it "
                                      "ends failed (preemptions do not count).")
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
    g.add_argument("--poll-s", type=at_least(1, "seconds between two looks at the queue, at least 1", float),
                   default=30, help="With --wait: seconds between two looks at the queue.")
    g.add_argument("--dry-run", action="store_true",
                   help="Print every resolved config (JSON) and the sbatch script; submit nothing.")
    return ap


def main(argv: list[str] | None = None) -> list[Any]:
    """Resolve the grid, check it, drop finished and live runs, submit one array; returns the submitted jobs."""
    from bench.run import configs_from_args

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.run_id:
        parser.error("--run-id: slurm.submit derives each run id from (method, reward, seed, grid name); "
                     "drop --run-id (use --grid-name to choose the grid part)")
    configs = configs_from_args(args, parser)
    args.grid_name = args.grid_name or grid_name(configs)
    assign_run_ids(configs, args.grid_name)
    refuse(parser, unresolvable(configs))
    folder = Path(args.folder)
    todo = plan(configs, folder)
    if args.dry_run:
        dry_run(args, configs, todo)
        return []
    if not todo:
        finished = all(run_is_done(cfg.out, cfg.run_id) for cfg in configs)
        print("every run of the grid is done: nothing to submit" if finished else "every run of the grid is done or "
              f"has a live job: nothing to submit (python -m slurm.status --folder {folder} shows them)")
        return []
    if args.executor == "slurm":
        refuse(parser, slurm_missing() or partition_problem(args))
    jobs = submit_jobs(args, todo)
    if isinstance(jobs, str):
        refuse(parser, jobs)
    append_manifest(folder, manifest_entries(args, todo, jobs))
    for cfg, job in zip(todo, jobs):
        print(f"submitted {cfg.run_id} as job {job.job_id}", flush=True)
    if args.wait:
        wait_and_report(folder, todo, args.poll_s)
    return jobs


if __name__ == "__main__":
    main(sys.argv[1:])
