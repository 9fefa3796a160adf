"""Rebuild the report from ``results/`` (our measurements) and ``reports/published/`` (the papers' numbers).

    python -m reports.build --results results --out reports/out

writes PNG plots and ``report.md``: (a) reward vs GPU-hours and vs wall-clock, one panel per (world, reward), a line
per method with a min-max band over seeds (the layout of DiffusionNFT Fig. 1a / Fig. 6); (b) the speedup table;
(c) Table-1-style final evaluations, measured rows beside published ones; (d) ablation plots.

Every table row says where it comes from -- ``measured (this harness, <world>)`` or
``published: <source>, <confidence>`` -- because a number from a toy world and a number from the paper must
never be read as the same thing. Missing pieces (one method only, no eval rows, no GPU-hours) become a sentence in
the report, not a crash.
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede the pyplot import
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.records import load_results  # noqa: E402
from reports.speedup import curves, speedup_table  # noqa: E402

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
HEADLINE_KEYS = ("eval/geneval_mean", "eval/avg_mean", "reward/avg_mean")  # the first one a group of runs logged is plotted
# x key -> (axis label, factor to the plotted unit, file stem of its plot)
X_AXES = {
    "cum/gpu_hours": ("GPU-hours", 1.0, "reward_vs_gpu_hours"),
    "cum/wall_s": ("wall-clock hours", 1 / 3600, "reward_vs_wall_clock"),
}
METHOD_COLORS = {"nft": "C0", "flowgrpo": "C1", "flowgrpo-fast": "C2", "cfg": "C3"}
BASELINE = "nft"  # speedups are reported as this method against each other method


def load_published(folder: Path | str = PUBLISHED_DIR) -> pd.DataFrame:
    """All published CSVs in one tidy frame (columns of the CSVs plus ``file``)."""
    frames = [pd.read_csv(path).assign(file=path.name) for path in sorted(Path(folder).glob("*.csv"))]
    if not frames:
        return pd.DataFrame(columns=["source", "confidence", "model", "iters", "reward", "metric", "value", "file"])
    return pd.concat(frames, ignore_index=True)


def fmt(value: object) -> str:
    """Compact cell text: 4 significant digits, thousands without exponent, blank for missing."""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return "" if value is None or value is pd.NA else str(value)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs the tabulate package, which we do not depend on)."""
    cells = [[fmt(v).replace("|", "\\|") for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")


def headline_key(df: pd.DataFrame) -> str | None:
    present = set(df["key"].unique())
    return next((key for key in HEADLINE_KEYS if key in present), None)


def short_metric(key: str) -> str:
    """Measured key -> the metric name the published CSVs use: eval/strict_accuracy/position -> position,
    eval/geneval_mean -> geneval, anything else loses only its ``eval/`` prefix."""
    name = key.removeprefix("eval/")
    if name.startswith("strict_accuracy/"):
        return name.removeprefix("strict_accuracy/")
    return name.removesuffix("_mean")


def seed_band(run_curves: pd.DataFrame) -> pd.DataFrame:
    """Per method and epoch over its runs: mean x, mean/min/max y and the number of runs."""
    grouped = run_curves.groupby(["method", "epoch"])
    return grouped.agg(x=("x", "mean"), y=("y", "mean"), y_min=("y", "min"), y_max=("y", "max"), n=("y", "size"))


def draw_band(ax, run_curves: pd.DataFrame, scale: float = 1.0, label_prefix: str = "") -> None:
    band = seed_band(run_curves).reset_index()
    for i, (method, part) in enumerate(band.groupby("method", sort=True)):
        color = METHOD_COLORS.get(method, f"C{4 + i}") if not label_prefix else None
        n_runs = run_curves.loc[run_curves["method"] == method, "run_id"].nunique()
        label = f"{label_prefix}{method} (n={n_runs})"
        if len(part) == 1:  # an untrained baseline (e.g. cfg) is one evaluation: draw it as a level, not a dot
            ax.axhline(part["y"].iloc[0], color=color, linestyle="--", label=label)
            continue
        line = ax.plot(part["x"] * scale, part["y"], color=color, marker="o", markersize=3, label=label)[0]
        ax.fill_between(part["x"] * scale, part["y_min"], part["y_max"], color=line.get_color(), alpha=0.2)


def plot_reward_curves(df: pd.DataFrame, x_key: str, out: Path) -> tuple[Path | None, list[str]]:
    """One panel per (world, reward): the headline metric against ``x_key``; returns the PNG and any notes."""
    x_label, scale, stem = X_AXES[x_key]
    groups = list(df.groupby(["world", "reward"], sort=True))
    notes: list[str] = []
    columns = min(4, len(groups))
    rows = math.ceil(len(groups) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(max(6.0, 4.5 * columns), 3.8 * rows), squeeze=False)
    for ax, ((world, reward), group) in zip(axes.flat, groups):
        metric = headline_key(group)
        run_curves = curves(group, metric, x_key) if metric else pd.DataFrame()
        ax.set_title(f"{reward} ({world})")
        if run_curves.empty:
            notes.append(f"{reward} ({world}): no runs log both {metric or 'a headline reward'} and {x_key}.")
            ax.text(0.5, 0.5, f"no {x_key}", ha="center", transform=ax.transAxes)
            continue
        draw_band(ax, run_curves, scale)
        ax.set_xlabel(x_label)
        ax.set_ylabel(metric)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle(f"reward vs {x_label} (mean over seeds, band = min..max)")
    fig.tight_layout()
    path = out / f"{stem}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, notes


def plot_ablations(df: pd.DataFrame, out: Path) -> list[Path]:
    """Per (world, reward) with ablation runs: headline metric vs epoch and vs GPU-hours, a line per label+method."""
    paths = []
    labelled = df[df["ablation"].notna()] if "ablation" in df.columns else df.iloc[0:0]
    for (world, reward), group in labelled.groupby(["world", "reward"], sort=True):
        metric = headline_key(group)
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
        for ax, x_key in zip(axes.flat, ("epoch", "cum/gpu_hours")):
            for label, runs in group.groupby("ablation", sort=True):
                run_curves = curves(runs, metric, x_key) if metric else pd.DataFrame()
                if not run_curves.empty:
                    draw_band(ax, run_curves, label_prefix=f"{label}: ")
            ax.set_xlabel(x_key)
            ax.set_ylabel(metric or "")
        handles, names = axes.flat[0].get_legend_handles_labels()
        if handles:  # one legend under both panels: ablation labels are long and would cover the curves
            fig.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize="small", ncol=1,
                       frameon=False)
        fig.suptitle(f"ablations, {reward} ({world})")
        fig.tight_layout()
        path = out / f"ablation_{slug(world)}_{slug(reward)}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def speedup_section(df: pd.DataFrame, n_boot: int) -> list[str]:
    """Markdown lines: the measured speedup of BASELINE over each other method, per (world, reward) and x axis."""
    lines, tables = [], []
    for (world, reward), group in df.groupby(["world", "reward"], sort=True):
        methods = sorted(group["method"].unique())
        metric = headline_key(group)
        others = [m for m in methods if m != BASELINE]
        if BASELINE not in methods or not others or metric is None:
            lines.append(f"- {reward} ({world}): no speedup: needs `{BASELINE}` and another method with a headline "
                         f"reward; found methods {methods}, metric {metric}.")
            continue
        for other in others:
            for x_key in X_AXES:
                try:
                    table = speedup_table(group, metric, x_key, a=BASELINE, b=other, n_boot=n_boot)
                except ValueError as error:
                    lines.append(f"- {reward} ({world}), {BASELINE} vs {other}, {x_key}: {error}.")
                    continue
                tables.append(table.assign(label=f"measured (this harness, {world})", reward=reward))
    if tables:
        table = pd.concat(tables, ignore_index=True)
        bounds = zip(table["ci_low"], table["ci_high"])
        table["95% CI"] = ["" if math.isnan(low) else f"{fmt(low)} .. {fmt(high)}" for low, high in bounds]
        columns = ["label", "reward", "metric", "x_key", "a", "b", "target", "target_value", "x_a", "x_b",
                   "speedup", "95% CI", "boot_reached", "lower_bound", "n_runs_a", "n_runs_b"]
        lines = [markdown_table(table[columns]), ""] + lines
    return lines


def measured_final_eval(df: pd.DataFrame) -> pd.DataFrame:
    """Per (world, reward, method): each eval metric at each run's last eval epoch, mean +/- std over runs."""
    evals = df[df["key"].str.startswith("eval/")]
    if evals.empty:
        return pd.DataFrame()
    last = evals.groupby("run_id")["epoch"].transform("max")
    final = evals[evals["epoch"] == last].assign(metric=lambda d: d["key"].map(short_metric))
    rows = []
    for (world, reward, method), group in final.groupby(["world", "reward", "method"], sort=True):
        row = {"label": f"measured (this harness, {world})", "model": method, "reward": reward,
               "runs": group["run_id"].nunique(), "epoch": int(group["epoch"].max())}
        for metric, values in group.groupby("metric", sort=True)["value"]:
            row[metric] = values.mean() if len(values) == 1 else f"{values.mean():.4g} ± {values.std():.2g}"
        rows.append(row)
    return pd.DataFrame(rows)


def published_table(published: pd.DataFrame) -> pd.DataFrame:
    """One source's rows pivoted to one row per model; a missing value shows its note (e.g. "almost immediately")."""
    ambiguous = published.groupby("metric")["eval_set"].nunique() > 1  # e.g. PickScore on two prompt sets
    metric_sets = zip(published["metric"], published["eval_set"])
    rows = published.assign(
        column=[f"{m} [{e}]" if ambiguous.get(m, False) else m for m, e in metric_sets],
        cell=[fmt(v) if not pd.isna(v) else fmt(n) for v, n in zip(published["value"], published["note"])],
        label="published: " + published["source"] + ", " + published["confidence"],
    )
    index = ["label", "model", "iters", "reward"]
    table = rows.fillna({"iters": "", "reward": ""}).pivot_table(index=index, columns="column", values="cell",
                                                                 aggfunc="first", sort=False)
    table.columns.name = None
    return table.reset_index()


def comparison_section(measured: pd.DataFrame, published: pd.DataFrame) -> list[str]:
    """Per published source: its table, with measured rows on top wherever they share a metric column."""
    lines = []
    for source, rows in published.groupby("source", sort=False):
        table = published_table(rows)
        shared = [c for c in table.columns[4:] if c in measured.columns]
        lines.append(f"### {source}")
        if shared:
            ours = measured.dropna(subset=shared, how="all")
            ours = ours[["label", "model", "reward", *shared]]
            table = pd.concat([ours, table], ignore_index=True)[list(table.columns)]
        else:
            lines.append("_No measured eval metric matches this table's columns._")
        lines += ["", markdown_table(table.fillna("")), ""]
    return lines


def build(results: Path | str, out: Path | str, n_boot: int = 1000, published_dir: Path | str = PUBLISHED_DIR) -> Path:
    """Write the plots and ``report.md`` into ``out``; returns the report path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = load_results(results)
    published = load_published(published_dir)
    lines = ["# Benchmark report", "",
             f"Regenerated by `python -m reports.build` from `{results}` ({df['run_id'].nunique()} runs, "
             f"{len(df)} rows) and `reports/published/`. Rows labelled `measured (this harness, <world>)` are ours; "
             "rows labelled `published: <source>, <confidence>` are the papers' (confidence: exact / transcribed / "
             "read-off-plot). A measured toy-world number is not comparable to a published SD3.5-M number.", ""]
    # Runs with an ablation label are variants, not extra seeds: pooling them into the method curves would be silent
    # mixing, so they appear only under "Ablations".
    main = df[df["ablation"].isna()]
    n_ablation = df["run_id"].nunique() - main["run_id"].nunique()
    if n_ablation:
        lines += [f"{n_ablation} runs carry an `ablation` label: they appear only under Ablations.", ""]

    lines += ["## Reward vs compute", ""]
    if main.empty:
        lines += ["_No measured runs found (ablation runs are under Ablations)._", ""]
    else:
        for x_key in X_AXES:
            path, notes = plot_reward_curves(main, x_key, out)
            lines += [f"![reward vs {X_AXES[x_key][0]}]({path.name})", ""] + [f"- {n}" for n in notes] + [""]

    lines += ["## Speedup", "", f"Measured: time for `{BASELINE}` and each other method to reach a final score "
              "(speedup = x_b / x_a; interval: bootstrap over seeds).", ""]
    lines += (speedup_section(main, n_boot) if not main.empty else ["_No measured runs found (ablation runs are under Ablations)._"]) + [""]
    efficiency = published[published["file"] == "head_to_head_efficiency.csv"]
    if not efficiency.empty:
        lines += ["Published:", "", markdown_table(published_table(efficiency).fillna("")), ""]

    lines += ["## Final evaluation: measured vs published", ""]
    measured = measured_final_eval(main) if not main.empty else pd.DataFrame()
    if measured.empty:
        lines += ["_No measured eval rows (keys `eval/...`) found; only published rows are shown._", ""]
        measured = pd.DataFrame(columns=["label", "model", "reward"])
    else:
        lines += ["### Measured final eval (all eval keys)", "", markdown_table(measured.fillna("")), ""]
    lines += comparison_section(measured, published[published["file"] != "head_to_head_efficiency.csv"])

    lines += ["## Ablations", ""]
    ablation_plots = plot_ablations(df, out) if not df.empty else []
    lines += [f"![{p.stem}]({p.name})" for p in ablation_plots] or ["_No runs carry an `ablation` label._"]
    lines += ["", "## Runs", ""]
    if not df.empty:
        run_columns = ["run_id", "method", "world", "reward", "seed", "ablation"]
        runs = df.groupby(run_columns, dropna=False)["epoch"].max().reset_index()
        lines.append(markdown_table(runs.rename(columns={"epoch": "last epoch"})))
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="results", help="results root written by bench.records")
    parser.add_argument("--out", default="reports/out", help="folder for the PNGs and report.md")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the speedup intervals")
    parser.add_argument("--published", default=str(PUBLISHED_DIR), help="folder of published CSVs")
    args = parser.parse_args(argv)
    print(build(args.results, args.out, n_boot=args.n_boot, published_dir=args.published))


if __name__ == "__main__":
    main()
