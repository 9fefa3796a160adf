"""List a submitted grid's tasks: state, epoch reached and latest reward.

    python -m slurm.status --folder slurm_jobs --results results

The task list is ``<folder>/grid.jsonl`` (written by slurm.submit, one line per submitted task; a resubmitted run
appears once, with its latest job). State: done, running, requeued (waiting to start again after a preemption, a
timeout or ``scontrol requeue``), pending (with SLURM's reason), or failed (with the error or how the job ended);
the rules are in :mod:`slurm.tasks`. squeue is enough: ``sacct`` (accounting) only adds how a job that left the
queue ended.

Epoch is the latest epoch row in the records (row k = the state after k training epochs), and the reward the latest
`reward/avg_mean`, both from the results store (:func:`bench.records.load_results`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bench.records import load_results
from slurm.tasks import MANIFEST, STATES, read_manifest, task_states

COLUMNS = ["run_id", "method", "reward", "seed", "job_id", "state", "epoch", "reward_mean", "note"]


def _records(root: Path, cache: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every record under ``root`` (read once per root)."""
    if str(root) not in cache:
        cache[str(root)] = load_results(root, with_meta=False) if root.exists() else pd.DataFrame(
            columns=["run_id", "epoch", "key", "value"])
    return cache[str(root)]


def status_table(folder: Path, results: Path | None = None) -> pd.DataFrame:
    """One row per task: run_id, method, reward, seed, job_id, state, epoch, reward_mean, note."""
    tasks = read_manifest(folder)
    cache: dict[str, pd.DataFrame] = {}
    runs = []
    for task in tasks:
        df = _records(Path(results) if results is not None else Path(task["out"]), cache)
        runs.append(df[df["run_id"] == task["run_id"]])
    states = task_states(tasks, folder, [not run.empty for run in runs])
    rows = []
    for task, run, state in zip(tasks, runs, states):
        reward = run[run["key"] == "reward/avg_mean"].sort_values("epoch")
        rows.append({"run_id": task["run_id"], "method": task["method"], "reward": task["reward"],
                     "seed": task["seed"], "job_id": task["job_id"], "state": state.state,
                     "epoch": int(run["epoch"].max()) if not run.empty else -1,
                     "reward_mean": float(reward["value"].iloc[-1]) if not reward.empty else float("nan"),
                     "note": state.note})
    return pd.DataFrame(rows, columns=COLUMNS)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(prog="python -m slurm.status", description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", default="slurm_jobs", help="The job folder given to slurm.submit.")
    ap.add_argument("--results", default=None, help="Results root; default each task's own --out.")
    args = ap.parse_args(argv)
    table = status_table(Path(args.folder), Path(args.results) if args.results else None)
    if table.empty:
        print(f"no tasks in {Path(args.folder) / MANIFEST}")
        return table
    with pd.option_context("display.max_colwidth", 100, "display.width", 250):
        print(table.to_string(index=False))
    counts = table["state"].value_counts()
    print("\n" + ", ".join(f"{state}: {counts.get(state, 0)}" for state in STATES))
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
