"""The tuning table of docs/tuning.md, rebuilt from ``results/``: held-out accuracy against training wall-clock.

    python -m reports.tuning --results results                       # every run that evaluated
    python -m reports.tuning --results results --runs nft_a,nft_b    # these runs, in this order

One row per run: the evaluation metric (default ``eval/strict_accuracy``) at the first evaluation at or after each
checkpoint of training wall-clock (evaluation excluded), its peak, the final value and the change from the start.
A run that stopped before a checkpoint shows a blank there, never a carried-over value.
"""
from __future__ import annotations

import argparse

import pandas as pd

from bench.records import load_results
from reports.build import markdown_table
from reports.speedup import curves


def tuning_table(df: pd.DataFrame, run_ids: list[str], checkpoints_s: tuple[float, ...] = (300, 600, 900),
                 metric: str = "eval/strict_accuracy") -> pd.DataFrame:
    rows = []
    for run_id in run_ids:
        curve = curves(df[df["run_id"] == run_id], metric, "cum/wall_s").rename(columns={"x": "wall_s", "y": "value"})
        if curve.empty:
            continue
        label = df.loc[df["run_id"] == run_id, "ablation"].dropna()
        row = {"run": run_id, "label": label.iloc[0] if len(label) else "", "start": curve["value"].iloc[0]}
        for s in checkpoints_s:  # allow 2 % slack: the last epoch ends a little past the budget, or just short of it
            after = curve[curve["wall_s"] >= 0.98 * s]
            row[f"~{s:.0f} s"] = after["value"].iloc[0] if len(after) else float("nan")
        row["peak"] = curve["value"].max()
        row["final"] = curve["value"].iloc[-1]
        row["final wall (s)"] = curve["wall_s"].iloc[-1]
        row["final - start"] = row["final"] - row["start"]
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Print the tuning table (accuracy vs training wall-clock) as Markdown.")
    ap.add_argument("--results", default="results", help="Results root folder to read.")
    ap.add_argument("--runs", default="", help="Comma-separated run ids in the order to show; default: every run "
                                               "that evaluated, sorted by id.")
    ap.add_argument("--metric", default="eval/strict_accuracy", help="Evaluation key to tabulate.")
    args = ap.parse_args(argv)
    df = load_results(args.results)
    runs = [r for r in args.runs.split(",") if r] or sorted(df.loc[df["key"] == args.metric, "run_id"].unique())
    print(markdown_table(tuning_table(df, runs, metric=args.metric)))


if __name__ == "__main__":
    main()
