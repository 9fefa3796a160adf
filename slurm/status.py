"""List a submitted grid's tasks: state, epoch reached and latest reward.

    python -m slurm.status --folder slurm_jobs --results results

The task list is ``<folder>/grid.jsonl`` (written by slurm.submit, one line per submitted task; a resubmitted run
appears once, with its latest job). State, first match wins:

* ``done``    -- the run's ``done`` marker and summary.json exist in the results store;
* ``failed``  -- submitit's result pickle holds an error, the scheduler says FAILED/CANCELLED/..., or a local
  job's process is gone without a result;
* ``running`` / ``pending`` -- from the scheduler (``sacct`` through submitit) for SLURM jobs, from the process for
  local ones; without either, ``running`` once the run has records and ``pending`` before.

Epoch is the latest epoch row in the records (row k = the state after k training epochs), and
the reward the latest `reward/avg_mean`, both from the results store (:func:`bench.records.load_results`).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from bench.records import load_results
from slurm.submit import MANIFEST, run_is_done

_FAILED = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED")
_PENDING = ("PENDING", "REQUEUED", "CONFIGURING", "SUSPENDED")


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """The grid's tasks, latest submission of each run id last-wins, in first-submission order."""
    path = folder / MANIFEST
    if not path.exists():
        return []
    tasks: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            tasks[entry["run_id"]] = {**tasks.get(entry["run_id"], {}), **entry}
    return list(tasks.values())


def _result_outcome(folder: Path, job_id: str) -> str | None:
    """"success" / "error" from submitit's result pickle of task 0, or None when the job has not finished."""
    path = folder / f"{job_id}_0_result.pkl"
    if not path.exists():
        return None
    try:
        with open(path, "rb") as handle:
            outcome, _ = pickle.load(handle)
    except Exception:  # noqa: BLE001 - a half-written or foreign pickle says nothing reliable
        return None
    return str(outcome)


def _scheduler_state(task: dict[str, Any], folder: Path) -> str | None:
    """The job's state from SLURM (sacct via submitit) or, for local jobs, whether its process lives."""
    job_id = task["job_id"]
    if task.get("executor") == "local":
        try:
            os.kill(int(job_id), 0)  # local job ids are the controller's pid
        except (OSError, ValueError):
            return "GONE"
        return "RUNNING"
    try:
        import submitit

        return str(submitit.SlurmJob(folder=folder, job_id=job_id).state).split()[0]
    except Exception:  # noqa: BLE001 - no sacct here (e.g. a laptop reading a copied folder)
        return None


def task_state(task: dict[str, Any], folder: Path, has_records: bool) -> str:
    """done / failed / running / pending for one task (see the module docstring for the rules)."""
    if run_is_done(task["out"], task["run_id"]):
        return "done"
    outcome = _result_outcome(folder, task["job_id"])
    if outcome == "error":
        return "failed"
    state = _scheduler_state(task, folder)
    if state is None:
        return "running" if has_records else "pending"
    if state.startswith(_FAILED) or (state == "GONE" and outcome is None):
        return "failed"
    if state.startswith(_PENDING):
        return "pending"
    if state in ("RUNNING", "COMPLETING"):
        return "running"
    return "running" if has_records else "pending"


def status_table(folder: Path, results: Path | None = None) -> pd.DataFrame:
    """One row per task: run_id, method, reward, seed, job_id, state, epoch, reward_mean."""
    tasks = read_manifest(folder)
    rows = []
    frames: dict[str, pd.DataFrame] = {}
    for task in tasks:
        root = Path(results) if results is not None else Path(task["out"])
        if str(root) not in frames:
            frames[str(root)] = load_results(root, with_meta=False) if root.exists() else pd.DataFrame(
                columns=["run_id", "epoch", "key", "value"])
        df = frames[str(root)]
        run = df[df["run_id"] == task["run_id"]]
        task = {**task, "out": str(root)}
        reward = run[run["key"] == "reward/avg_mean"].sort_values("epoch")
        rows.append({"run_id": task["run_id"], "method": task["method"], "reward": task["reward"],
                     "seed": task["seed"], "job_id": task["job_id"],
                     "state": task_state(task, folder, has_records=not run.empty),
                     "epoch": int(run["epoch"].max()) if not run.empty else -1,
                     "reward_mean": float(reward["value"].iloc[-1]) if not reward.empty else float("nan")})
    return pd.DataFrame(rows, columns=["run_id", "method", "reward", "seed", "job_id", "state", "epoch",
                                       "reward_mean"])


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(prog="python -m slurm.status", description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", default="slurm_jobs", help="The job folder given to slurm.submit.")
    ap.add_argument("--results", default=None, help="Results root; default each task's own --out.")
    args = ap.parse_args(argv)
    table = status_table(Path(args.folder), Path(args.results) if args.results else None)
    if table.empty:
        print(f"no tasks in {Path(args.folder) / MANIFEST}")
        return table
    print(table.to_string(index=False))
    counts = table["state"].value_counts()
    print("\n" + ", ".join(f"{state}: {counts.get(state, 0)}" for state in ("done", "running", "pending", "failed")))
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
