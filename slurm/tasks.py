"""A submitted grid's tasks and the state of each: what ``slurm.status`` shows, what ``slurm.submit`` skips and what
``slurm.submit --wait`` waits for.

The task list is ``<folder>/grid.jsonl`` (one line per submitted task; a run submitted again appears once, with its
latest job). A task's state, first match wins:

* ``failed``   -- its job's result (submitit's result pickle) holds an error, also when another job finished the run
  (a duplicate that crashed is not ``done``);
* ``done``     -- the run's ``done`` marker and summary.json exist in the results store;
* from the scheduler (``squeue``, which needs no accounting; ``sacct`` only says how a job that left the queue
  ended): ``running``; ``requeued`` (preempted, timed out or ``scontrol requeue``-d, waiting to start again);
  ``pending`` with SLURM's reason (Priority, Resources, BeginTime...; a request the partition can never satisfy says
  so); ``failed`` when the job ended, or left the queue, without finishing its run;
* local jobs (``--executor local``): ``running`` while the process lives, ``failed`` when it is gone;
* without any scheduler to ask: ``running`` once the run has records, ``pending`` before.
"""
from __future__ import annotations

import json
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from slurm import scheduler

MANIFEST = "grid.jsonl"
DONE_FILE = "done"
ENDED = ("done", "failed")
LIVE = ("running", "requeued", "pending")
STATES = ("done", *LIVE, "failed")
_RUNNING = ("RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING")
_REQUEUEING = ("REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED")
# squeue reasons of a request that never starts as it is (EnforcePartLimits=NO accepts it and leaves it pending)
_NEVER_RUNS = {
    "PartitionConfig": "asks for more CPUs, memory or GPUs per node than the partition has",
    "PartitionNodeLimit": "asks for more nodes than the partition allows",
    "PartitionTimeLimit": "asks for a longer time limit than the partition allows",
    "InvalidAccount": "names an account that is not valid here",
    "InvalidQOS": "names a QOS that is not valid here",
}


@dataclass(frozen=True)
class TaskState:
    """One task's state (one of :data:`STATES`) and a short note saying why (SLURM's reason, an error...)."""

    state: str
    note: str = ""


# ------------------------------------------------------------------------------------------------ the task list
def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """The grid's tasks, latest submission of each run id last-wins, in first-submission order."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return []
    tasks: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            tasks[entry["run_id"]] = {**tasks.get(entry["run_id"], {}), **entry}
    return list(tasks.values())


def append_manifest(folder: Path, entries: Iterable[dict[str, Any]]) -> None:
    """One line per submitted task in ``<folder>/grid.jsonl``."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / MANIFEST, "a") as handle:
        for entry in entries:
            handle.write(json.dumps(entry) + "\n")


# ------------------------------------------------------------------------------------------------ the run
def run_is_done(out: str | Path, run_id: str) -> bool:
    """A run finished when its summary exists and the task that ran it wrote the ``done`` marker afterwards.

    summary.json alone is not enough: the Trainer writes it whenever it closes, including after an exception.
    """
    run_dir = Path(out) / run_id
    return (run_dir / "summary.json").exists() and (run_dir / DONE_FILE).exists()


def write_done(out: str | Path, run_id: str, job_id: str | None, result: dict[str, Any]) -> None:
    """Mark run ``run_id`` finished by job ``job_id`` (its result beside it)."""
    marker = {"job_id": job_id, **result}
    (Path(out) / run_id / DONE_FILE).write_text(json.dumps(marker, default=str))


def result_outcome(folder: Path, job_id: str) -> tuple[str, str] | None:
    """``("success" | "error", text)`` from submitit's result pickle of the job's task 0; None while it has none."""
    path = Path(folder) / f"{job_id}_0_result.pkl"
    if not path.exists():
        return None
    try:
        with open(path, "rb") as handle:
            outcome, value = pickle.load(handle)
    except Exception:  # noqa: BLE001 - a half-written or foreign pickle says nothing reliable
        return None
    return str(outcome), str(value)


def _error_line(traceback: str) -> str:
    """The exception line of a traceback (its last non-empty line), shortened for a table cell."""
    lines = [line.strip() for line in traceback.strip().splitlines() if line.strip()]
    text = lines[-1] if lines else "an error"
    return text if len(text) <= 160 else text[:157] + "..."


# ------------------------------------------------------------------------------------------------ states
def live_tasks(folder: Path, run_ids: Iterable[str]) -> dict[str, tuple[dict[str, Any], TaskState]]:
    """The latest job of each of ``run_ids`` that is still pending, running or being requeued: ``run_id -> (task,
    state)``. Where the scheduler cannot be asked, a job counts as live: submitting it again could run it twice."""
    wanted = set(run_ids)
    tasks = [task for task in read_manifest(folder) if task["run_id"] in wanted]
    states = task_states(tasks, folder, [False] * len(tasks))
    return {task["run_id"]: (task, state) for task, state in zip(tasks, states) if state.state in LIVE}


def wait(folder: Path, run_ids: Iterable[str], poll_s: float) -> list[tuple[dict[str, Any], TaskState]]:
    """Block until the latest job of every run of ``run_ids`` has ended (done or failed), looking every ``poll_s``
    seconds and printing each change of state; returns ``(task, state)`` per run."""
    wanted, shown = set(run_ids), {}
    while True:
        tasks = [task for task in read_manifest(folder) if task["run_id"] in wanted]
        states = task_states(tasks, folder, [False] * len(tasks))
        for task, state in zip(tasks, states):
            if shown.get(task["run_id"]) != state:
                shown[task["run_id"]] = state
                print(f"{task['run_id']}: {state.state}" + (f" ({state.note})" if state.note else ""), flush=True)
        if all(state.state in ENDED for state in states):
            return list(zip(tasks, states))
        time.sleep(poll_s)


def task_states(tasks: list[dict[str, Any]], folder: Path, has_records: list[bool]) -> list[TaskState]:
    """The state of every task (see the module docstring), asking the scheduler once for all of them."""
    slurm_ids = [t["job_id"] for t in tasks if t.get("executor") != "local"]
    queued = scheduler.queued_jobs(slurm_ids)
    unqueued = [i for i in slurm_ids if queued is None or i not in queued]
    accounted = scheduler.accounted_states(unqueued) if unqueued else {}
    return [_state(task, Path(folder), records, queued, accounted) for task, records in zip(tasks, has_records)]


def _state(task: dict[str, Any], folder: Path, has_records: bool, queued: dict[str, scheduler.QueuedJob] | None,
           accounted: dict[str, str] | None) -> TaskState:
    job_id = task["job_id"]
    outcome = result_outcome(folder, job_id)
    if outcome is not None and outcome[0] == "error":
        return TaskState("failed", _error_line(outcome[1]))
    if run_is_done(task["out"], task["run_id"]):
        return TaskState("done")
    if task.get("executor") == "local":
        return _local_state(job_id, outcome)
    if queued is not None and job_id in queued:
        return _queued_state(queued[job_id])
    ended = (accounted or {}).get(job_id)
    if queued is not None:  # squeue answered and no longer lists the job: it ended without finishing its run
        return TaskState("failed", f"job left the queue without finishing its run ({ended or 'state unknown'})")
    if ended is not None:
        return _accounted_state(ended)
    return TaskState("running" if has_records else "pending", "no scheduler to ask here")


def _local_state(job_id: str, outcome: tuple[str, str] | None) -> TaskState:
    """A local job's controller process (its id is the job id) lives or is gone."""
    if not _process_alive(job_id):
        return TaskState("failed", "process gone without finishing its run")
    return TaskState("running") if outcome is None else TaskState("failed", "ended without finishing its run")


def _process_alive(pid: str) -> bool:
    """Whether process ``pid`` runs: it exists and, where /proc says so, is not a zombie (killed, not yet reaped)."""
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _queued_state(job: scheduler.QueuedJob) -> TaskState:
    """State of a job that squeue lists (live, or ended less than MinJobAge ago)."""
    restarted = f"requeued {job.restarts} time(s)" if job.restarts else ""
    # a requeue counts at once: the job completes (SLURM waits KillWait for it), then waits to start again
    if job.state.startswith(_REQUEUEING) or (job.restarts and job.state in ("PENDING", "COMPLETING")):
        return TaskState("requeued", ", ".join(filter(None, [restarted or job.state, _reason(job.reason)])))
    if job.state.startswith(_RUNNING):
        return TaskState("running", restarted)
    if job.state == "PENDING":
        return TaskState("pending", _reason(job.reason))
    if job.state == "SUSPENDED":
        return TaskState("pending", "suspended by SLURM")
    return TaskState("failed", f"job ended {job.state} without finishing its run")


def _accounted_state(state: str) -> TaskState:
    """State from sacct alone (squeue cannot be asked, e.g. on a machine outside the cluster)."""
    if state.startswith(_RUNNING):
        return TaskState("running")
    if state.startswith(_REQUEUEING):
        return TaskState("requeued", state)
    if state == "PENDING":
        return TaskState("pending")
    return TaskState("failed", f"job ended {state} without finishing its run")


def _reason(reason: str) -> str:
    """squeue's reason for a waiting job, explained when it means the job can never start as requested."""
    if reason in _NEVER_RUNS:
        return f"{reason}: never starts, the request {_NEVER_RUNS[reason]}; scancel it and submit a smaller one"
    return "" if reason in ("None", "") else reason
