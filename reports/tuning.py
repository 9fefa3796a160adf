"""The tuning table of docs/tuning.md, rebuilt from ``results/``: held-out accuracy against the training clock.

    python -m reports.tuning --results results                       # every run that evaluated
    python -m reports.tuning --results results --runs nft_a,nft_b    # these runs, in this order
    python -m reports.tuning --results results --clock wall          # wall-clock even for CPU-budgeted runs
    python -m reports.tuning --results results/headline --at 300,1800,3600,7500   # long runs: other checkpoints
    python -m reports.tuning --results results/ablations --by-label   # one row per ablation label: seed means

One row per run: the evaluation metric (default ``eval/strict_accuracy``) at the first evaluation at or after each
checkpoint of the training clock (evaluation excluded), its peak, the final value and the change from the start.
The clock is the run's own (``--clock auto``: CPU time for a run budgeted by CPU time, else wall-clock; see
:mod:`reports.groups`) and is named in the ``clock`` column. A run that stopped before a checkpoint shows a blank
there, never a carried-over value. ``epochs`` counts the run's training epochs (rows with a rollout reward).
``--by-label`` averages the rows of the runs that share an ablation label (its seeds) column by column; a checkpoint
that one of them never reached stays blank.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from bench.records import load_results
from reports.groups import CLOCK_CHOICES, resolve_clock, run_table
from reports.markdown import markdown_table
from reports.speedup import curves


def tuning_table(df: pd.DataFrame, run_ids: list[str], checkpoints_s: tuple[float, ...] = (300, 600, 900),
                 metric: str = "eval/strict_accuracy", clock: str = "auto",
                 runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """The table for ``run_ids`` (in that order; runs without the metric are left out). ``runs``
    (:func:`reports.groups.run_table`) gives the CPU budgets ``clock="auto"`` looks at; without it, wall-clock."""
    runs = run_table(df) if runs is None else runs
    rows = []
    for run_id in run_ids:
        run = df[df["run_id"] == run_id]
        run_clock = resolve_clock(clock, runs[runs["run_id"] == run_id])
        curve = curves(run, metric, run_clock.key)
        if curve.empty:
            continue
        seconds = curve["x"] * run_clock.to_seconds
        label = run["ablation"].dropna()
        row = {"run": run_id, "label": label.iloc[0] if len(label) else "", "clock": run_clock.short,
               "start": curve["y"].iloc[0]}
        for s in checkpoints_s:  # allow 2 % slack: the last epoch ends a little past the budget, or just short of it
            after = curve["y"][seconds >= 0.98 * s]
            row[f"~{s:.0f} s"] = after.iloc[0] if len(after) else float("nan")
        row.update({"peak": curve["y"].max(), "final": curve["y"].iloc[-1], "final clock (s)": seconds.iloc[-1]})
        row["final - start"] = row["final"] - row["start"]
        row["epochs"] = int((run["key"] == "reward/avg_mean").sum())
        row.update(reward_trend(run))
        rows.append(row)
    return pd.DataFrame(rows)


def label_means(table: pd.DataFrame) -> pd.DataFrame:
    """One row per ablation label of a :func:`tuning_table`, in the order labels first appear: ``runs`` (how many
    runs share it) and the mean of every numeric column over them. A mean over a column that one run lacks (a
    checkpoint it never reached) is blank, not the mean of the others. A run without a label is a row of its own."""
    if table.empty:
        return table
    numeric = [c for c in table.columns if c not in ("run", "label", "clock")]
    keys = table["label"].where(table["label"].astype(bool), table["run"])
    rows = []
    for label, group in table.groupby(keys, sort=False):
        row = {"label": label, "runs": len(group), "clock": ", ".join(group["clock"].unique())}
        row.update({c: group[c].mean(skipna=False) for c in numeric})
        rows.append(row)
    return pd.DataFrame(rows)


def reward_trend(run: pd.DataFrame, key: str = "reward/avg_mean", fraction: float = 0.2) -> dict[str, float]:
    """The training reward (on the method's own rollouts) averaged over the first and the last ``fraction`` of a
    run's epochs (at least one each): whether the policy improves on what it samples, beside the evaluation."""
    values = run[run["key"] == key].sort_values("epoch")["value"].to_numpy()
    if len(values) == 0:
        return {}
    n = max(1, int(len(values) * fraction))
    return {"train reward, first 20 %": float(values[:n].mean()), "last 20 %": float(values[-n:].mean())}


def checkpoint_list(text: str) -> tuple[float, ...]:
    """``--at``: "300,1800" -> (300.0, 1800.0); anything but positive numbers is a usage error naming the flag."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"--at {text!r}: give positive seconds separated by commas, e.g. 300,1800")
    return values


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Print the tuning table (accuracy vs training clock) as Markdown.")
    ap.add_argument("--results", default="results", help="Results root folder to read.")
    ap.add_argument("--runs", default="", help="Comma-separated run ids in the order to show; default: every run "
                                               "that evaluated, sorted by id.")
    ap.add_argument("--metric", default="eval/strict_accuracy", help="Evaluation key to tabulate.")
    ap.add_argument("--at", type=checkpoint_list, default=(300.0, 600.0, 900.0),
                    help="Comma-separated training-clock checkpoints in seconds at which to read each run's "
                         "evaluation (the first at or after each, 2 %% slack), e.g. 300,1800,7500.")
    ap.add_argument("--by-label", action="store_true",
                    help="Print one row per ablation label (the mean over the runs that carry it, with their count) "
                         "instead of one row per run.")
    ap.add_argument("--clock", choices=CLOCK_CHOICES, default="auto",
                    help="Training clock: auto = CPU time for CPU-budgeted runs, else wall-clock.")
    args = ap.parse_args(argv)
    df = load_results(args.results)
    runs = [r for r in args.runs.split(",") if r] or sorted(df.loc[df["key"] == args.metric, "run_id"].unique())
    table = tuning_table(df, runs, checkpoints_s=args.at, metric=args.metric, clock=args.clock,
                         runs=run_table(df, Path(args.results)))
    if args.by_label:
        table = label_means(table)
    elif "label" in table and not table["label"].astype(bool).any():
        table = table.drop(columns="label")  # no run carries an ablation label: no empty column
    print(markdown_table(table))


if __name__ == "__main__":
    main()
