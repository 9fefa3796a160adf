"""Rebuild the report from ``results/`` (our measurements) and ``reports/published/`` (the papers' numbers).

    python -m reports.build --results results --out reports/out [--clock auto|wall|cpu|gpu_hours]
                            [--headline results/headline]

writes PNG plots and ``report.md``:

1. **Headline: NFT vs FlowGRPO**, when the headline folder (default ``<results>/headline``) holds runs: the
   speedup table (NFT as A, FlowGRPO as B), every other method's speedup tables against each of them (it as A),
   its speedup over each beside the papers' claims, the curves and the final table of those runs.
2. **Default comparison**: the same for the runs directly under ``<results>`` without an ablation label, every
   pair of methods, plus each method's speedup over FlowGRPO and over NFT beside the papers' claimed speedups
   (:mod:`reports.claims`).
3. **Published numbers**, one table per source, never mixed with measured rows: a toy-world number and an
   SD3.5-M number never share a table.
4. **Ablations** (runs with an ``ablation`` label under ``<results>``, and the runs of ``<results>/ablations``):
   the papers' findings beside the measured effects (:mod:`reports.ablations`), a panel per ablation family; and the
   list of runs.

Grouping (which runs are seeds of one curve, repeats), clocks and labels: :mod:`reports.groups`; targets,
censoring and the bootstrap: :mod:`reports.speedup`. Curves: thin lines per seed, a thick mean over seeds on a
common grid (only where every seed has data), CFG baselines as horizontal lines. Missing pieces (one method only,
no eval rows) become a sentence in the report, not a crash.
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede the pyplot import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.cli import at_least, existing_dir  # noqa: E402
from bench.records import load_results  # noqa: E402
from reports.ablations import family_panels, findings_table, labelled_panels  # noqa: E402
from reports.claims import claims_section  # noqa: E402
from reports.groups import (  # noqa: E402
    CLOCK_CHOICES, EPOCHS, Clock, Group, Panel, clock_length, panels, run_table,
)
from reports.markdown import count, fmt, markdown_table  # noqa: E402,F401  (fmt, markdown_table: public here too)
from reports.speedup import (  # noqa: E402
    baseline_levels, format_seconds, group_curves, mean_curve, pair_markdown, time_unit,
)

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# The shapes world's test prompts of these tags never occur in training; those of the other three all do
# (worlds.shapes.prompts.HELD_OUT_TAGS, checked against the shipped files by its tests).
HELD_OUT_TAGS = ("colors", "position", "color_attr")
FINAL_COLUMNS = {"strict accuracy": "eval/strict_accuracy", "accuracy": "eval/accuracy",
                 "partial score": "eval/score", **{tag: f"eval/strict_accuracy/{tag}" for tag in GENEVAL_TAGS}}
METHOD_COLORS = {"nft": "C0", "flowgrpo": "C1", "flowgrpo-fast": "C2", "grpo-guard": "C4", "tempflow-grpo": "C5",
                 "awm": "C6", "dgpo": "C8"}
SPARE_COLORS = ("C4", "C5", "C6", "C8", "C9", "C0", "C1", "C2", "navy", "olive", "teal", "maroon", "gold", "lime")
LEVEL_STYLES = (("C3", "--"), ("C7", ":"), ("k", "-."))  # CFG baseline levels: (colour, line style)


def load_published(folder: Path | str = PUBLISHED_DIR) -> pd.DataFrame:
    """All published CSVs in one tidy frame (columns of the CSVs plus ``file``)."""
    frames = [pd.read_csv(path).assign(file=path.name) for path in sorted(Path(folder).glob("*.csv"))]
    if not frames:
        return pd.DataFrame(columns=["source", "confidence", "model", "iters", "reward", "metric", "value", "file"])
    return pd.concat(frames, ignore_index=True)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")


def _colors(panel: Panel) -> dict[str, str]:
    """Group label -> colour: the method's colour when it has one group in the panel, else a colour of its own."""
    methods = [g.method for g in panel.trained]
    spare = iter(SPARE_COLORS)
    return {g.label: METHOD_COLORS[g.method] if methods.count(g.method) == 1 and g.method in METHOD_COLORS
            else next(spare, "black") for g in panel.trained}  # C3 and C7 (red, grey) are the CFG levels


def panel_curves(df: pd.DataFrame, panel: Panel, clock: Clock) -> dict[str, list]:
    """Each trained group's seed curves ``(x, y)`` of the panel's metric on ``clock``, by group label."""
    return {g.label: group_curves(df, g, panel.metric, clock) for g in panel.trained} if panel.metric else {}


def shortest_end(curves: dict[str, list]) -> tuple[float, float]:
    """(the earliest last evaluation of any group's longest seed, the latest of all) of :func:`panel_curves`: a
    panel whose longest run outlasts the others many times over gets a second axis up to the first
    (:func:`plot_panel`)."""
    ends = [max(float(x.max()) for x, _ in seeds) for seeds in curves.values() if seeds]
    return (min(ends), max(ends)) if ends else (0.0, 0.0)


def draw_panel(ax, df: pd.DataFrame, panel: Panel, clock: Clock, until: float | None = None,
               curves: dict[str, list] | None = None) -> None:
    """One panel: per trained group its seeds (thin) and their mean on a common grid (thick); CFG levels dashed.
    ``until`` shows only the clock up to that value (its y range fitted to what is shown); ``curves``: the
    panel's :func:`panel_curves` on ``clock`` when the caller has them."""
    metric = panel.metric
    drawn = panel_curves(df, panel, clock) if curves is None else curves
    levels = baseline_levels(df, panel, metric) if metric else []
    longest = max((float(x.max()) for seeds in drawn.values() for x, _ in seeds), default=0.0)
    unit, size = ("", 1.0) if clock is EPOCHS else time_unit(until or longest)
    colors = _colors(panel)
    for label, seeds in drawn.items():
        for x, y in seeds:
            ax.plot(x / size, y, color=colors[label], linewidth=0.8, alpha=0.45)
        if len(seeds) > 1:
            grid, mean = mean_curve(seeds)
            ax.plot(grid / size, mean, color=colors[label], linewidth=2.2,
                    label=f"{label} (mean of {len(seeds)} seeds)")
        elif seeds:
            ax.plot(seeds[0][0] / size, seeds[0][1], color=colors[label], linewidth=1.8, label=f"{label} (1 seed)")
    for i, (label, level) in enumerate(levels):
        color, style = LEVEL_STYLES[i % len(LEVEL_STYLES)]
        ax.axhline(level, color=color, linestyle=style, label=f"{label}: {level:.3f}")
    ax.set_title(f"{panel.reward} ({panel.world})")
    if until:
        shown = [v for seeds in drawn.values() for x, y in seeds for v in y[x <= until * 1.001]]
        shown += [level for _, level in levels]
        pad = 0.05 * (max(shown) - min(shown) or 1.0)
        ax.set_xlim(-0.02 * until / size, until * 1.02 / size)
        ax.set_ylim(min(shown) - pad, max(shown) + pad)
        ax.set_title(f"{panel.reward} ({panel.world}), the first {until / size:.0f} {unit}")
    ax.set_xlabel(clock.description if clock is EPOCHS else f"{clock.description} [{unit}]")
    ax.set_ylabel(metric or "no headline metric")


def plot_panel(df: pd.DataFrame, panel: Panel, path: Path, title: str,
               clocks: tuple[Clock | None, ...] = (None,), zoom: bool = False) -> Path:
    """One figure for one panel, an axis per entry of ``clocks`` (None: the panel's own clock) and one legend below
    them (group labels can be long); returns ``path``. ``zoom``: where one group ran over twice as long as another,
    a second axis shows the panel's clock up to the shorter one's end (the budget they share)."""
    own = panel_curves(df, panel, panel.clock)  # drawn on every axis of the panel's own clock
    first, last = shortest_end(own) if zoom and panel.clock is not EPOCHS else (0.0, 0.0)
    axes_spec = [(c or panel.clock, None) for c in clocks] + ([(panel.clock, first)] if first * 2 < last else [])
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(6.5 * len(axes_spec), 4.5), squeeze=False)
    for ax, (clock, until) in zip(axes.flat, axes_spec):
        draw_panel(ax, df, panel, clock, until, own if clock is panel.clock else None)
    fig.suptitle(title)
    fig.tight_layout()
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize="small", frameon=False)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _last_value(df: pd.DataFrame, run_id: str, key: str) -> float:
    """The value of ``key`` at the last epoch where ``run_id`` logged it (nan when never)."""
    rows = df[(df["run_id"] == run_id) & (df["key"] == key)]
    return float(rows.sort_values("epoch")["value"].iloc[-1]) if len(rows) else math.nan


def _mean_cell(values: list[float]) -> object:
    """Mean over seeds; ``mean ± std`` (std over seeds) with two or more seeds; nan when none."""
    values = [v for v in values if not math.isnan(v)]
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else math.nan
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def seeds_text(group: Group) -> str:
    """Seeds counted, e.g. ``3`` or ``2 (1 repeat(s) dropped)``."""
    return f"{len(group.seeds)}" + (f" ({len(group.repeats)} repeat(s) dropped)" if group.repeats else "")


def final_table(df: pd.DataFrame, world_panels: list[Panel]) -> pd.DataFrame:
    """One row per group of the panels (one world): seeds, training length, then the final evaluation (mean over
    seeds of each seed's last evaluation) of strict accuracy, accuracy, partial score and the six GenEval tags;
    columns empty in every row are dropped."""
    rows = []
    for panel in world_panels:
        columns = dict(FINAL_COLUMNS)
        if panel.metric and panel.metric not in columns.values():
            columns = {panel.metric: panel.metric, **columns}
        lengths = clock_length(df[df["run_id"].isin([r for g in panel.groups for r in g.runs])], panel.clock)
        for group in panel.groups:
            trained = format_seconds(float(lengths[group.runs].mean())) + f" {panel.clock.short}"
            row = {"method / setting": group.label, "reward": panel.reward, "seeds": seeds_text(group),
                   "trained": trained if group.trained else "no training"}
            row.update({name: _mean_cell([_last_value(df, r, key) for r in group.runs])
                        for name, key in columns.items()})
            if panel.world == "shapes":
                row["held-out tags (strict, mean of 3)"] = _mean_cell([float(np.mean(
                    [_last_value(df, r, f"eval/strict_accuracy/{tag}") for tag in HELD_OUT_TAGS]))
                    for r in group.runs])
            rows.append(row)
    table = pd.DataFrame(rows)
    return table.dropna(axis=1, how="all")


def repeats_lines(all_panels: list[Panel]) -> list[str]:
    """A sentence per dropped repeat run."""
    return [f"- Repeat dropped: `{run}` (same setting and seed as `{kept}`, which ran longer or later; its seed "
            f"counts once, in {g.label})." for p in all_panels for g in p.groups for run, kept in g.repeats.items()]


def others_against(panel: Panel, pair: tuple[str, str]) -> list[tuple[Group, Group]]:
    """(other, base) for every trained group of a method outside ``pair`` and each group of ``pair``'s methods
    (in :attr:`Panel.ordered`): the headline folder's AWM, DGPO, ... each against NFT and FlowGRPO."""
    ordered = panel.ordered
    return [(x, y) for x in ordered if x.method not in pair for m in pair for y in ordered if y.method == m]


def section(title: str, df: pd.DataFrame, runs: pd.DataFrame, out: Path, stem: str, clock: str, n_boot: int,
            monotone: bool, a: str | None = None, b: str | None = None,
            published: pd.DataFrame | None = None) -> list[str]:
    """Markdown lines of one comparison: speedup tables per (world, reward) and pair, the claimed-vs-measured
    tables (with ``published``), curves, final tables."""
    lines = [f"## {title}", ""]
    if df.empty:
        return lines + ["_No measured runs found._", ""]
    all_panels = panels(df, runs, clock)
    lines += ["### Speedup", ""]
    for panel in all_panels:
        pairs = panel.pairs(a, b)
        lines += [pair_markdown(df, panel, x, y, n_boot, monotone=monotone) + "\n" for x, y in pairs] or [
            f"- {panel.reward} ({panel.world}): no speedup: needs two trained methods "
            f"({a or 'any'} vs {b or 'any'}) with `{panel.metric}`; found {[g.label for g in panel.groups]}.", ""]
        if a is not None and b is not None:  # every other method of the folder against both
            for x, y in others_against(panel, (a, b)):
                lines += [pair_markdown(df, panel, x, y, n_boot, monotone=monotone) + "\n"]
    lines += repeats_lines(all_panels) + [""]
    if published is not None:
        lines += claims_section(df, all_panels, published, n_boot)
    lines += ["### Curves", ""]
    for panel in all_panels:
        path = out / f"{stem}_{slug(panel.world)}_{slug(panel.reward)}.png"
        plot_panel(df, panel, path, f"{title}: {panel.reward} ({panel.world}); thin = seeds, thick = mean of seeds",
                   zoom=True)
        lines += [f"![{title}, {panel.reward} ({panel.world})]({path.name})", ""]
    lines += ["### Final evaluation (measured, this harness)", ""]
    for world in sorted({p.world for p in all_panels}):
        table = final_table(df, [p for p in all_panels if p.world == world])
        lines += [f"World `{world}` (measured): mean over seeds of each seed's last evaluation (± std over seeds).",
                  "", markdown_table(table.fillna("")), ""]
        if world == "shapes":
            lines += ["Test-set accuracy, not held-out as a whole: the test prompts of single_object, two_object and "
                      "counting all occur in training too (only 18 such prompts exist), those of colors, position "
                      "and color_attr never do; the last column averages these three held-out tags "
                      "(`python -m worlds.shapes.prompts --overlap`).", ""]
    return lines


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
    rows = rows.astype({"iters": object, "reward": object}).fillna({"iters": "", "reward": ""})
    table = rows.pivot_table(index=index, columns="column", values="cell", aggfunc="first", sort=False)
    table.columns.name = None
    return table.reset_index()


def published_section(published: pd.DataFrame) -> list[str]:
    """One table per published source (model column: e.g. SD3.5-M), none holding a measured row."""
    lines = ["## Published numbers (the papers' models, e.g. SD3.5-M; not comparable to a toy world)", ""]
    for source, rows in published.groupby("source", sort=False):
        lines += [f"### {source}", "", markdown_table(published_table(rows).fillna("")), ""]
    return lines if len(published) else lines + ["_No published CSVs found._", ""]


def ablation_section(df: pd.DataFrame, runs: pd.DataFrame, out: Path, clock: str, n_boot: int = 2000) -> list[str]:
    """Runs with an ablation label: per (world, reward) the findings table (the papers' ablations, measured effect,
    reproduced or not; :mod:`reports.ablations`), one panel per ablation family against the clock, and one panel of
    the remaining labelled runs (e.g. tuning trials) against epochs and the clock."""
    lines = ["## Ablations", ""]
    found = labelled_panels(df, runs, clock)
    if not found:
        return lines + ["_No runs carry an `ablation` label._", ""]
    for panel, part in found:
        where = f"{slug(panel.world)}_{slug(panel.reward)}"
        table = findings_table(part, panel, n_boot)
        if not table.empty:
            lines += [f"### {panel.reward} ({panel.world}): the papers' ablations", "",
                      f"Effect on `{panel.metric}` at each run's final evaluation (mean over seeds) with a 95 % "
                      "t interval whose seed-to-seed spread is pooled over all groups of the method (2 seeds a side "
                      "give too few to estimate it per pair); reproduced = that interval lies on the paper's side of "
                      "0. The bootstrap interval over each pair's own seeds is printed beside it "
                      "(`reports.ablations`).", "",
                      markdown_table(table), ""]
        families = family_panels(panel)
        for family, fpanel in families.items():
            path = out / f"ablation_{where}_{slug(family)}.png"
            plot_panel(part, fpanel, path, f"{family}, {panel.reward} ({panel.world}); thin = seeds, thick = mean")
            lines += [f"![{family}]({path.name})", ""]
        in_family = {g.label for fp in families.values() for g in fp.groups}
        rest = [g for g in panel.groups if g.label not in in_family]
        if rest:
            other = Panel(panel.world, panel.reward, panel.clock, panel.metric, rest)
            path = out / f"ablation_{where}.png"
            plot_panel(part, other, path, f"ablations, {panel.reward} ({panel.world})", clocks=(EPOCHS, None))
            lines += [f"![{path.stem}]({path.name})", ""]
        lines += repeats_lines([panel])
    return lines + [""]


def runs_table(df: pd.DataFrame, runs: pd.DataFrame, clock: str) -> pd.DataFrame:
    """Every run: its group (curve) label and whether its seed counts or it is a dropped repeat."""
    label, counted = {}, {}
    for panel in panels(df, runs, clock):
        for group in panel.groups:
            label.update({r: group.label for r in [*group.runs, *group.repeats]})
            counted.update({r: "yes" for r in group.runs})
            counted.update({r: f"repeat of {kept}" for r, kept in group.repeats.items()})
    last = df.groupby("run_id")["epoch"].max()
    table = runs[["run_id", "method", "world", "reward", "seed", "ablation", "config_fingerprint"]].copy()
    return table.assign(curve=table["run_id"].map(label), counted=table["run_id"].map(counted),
                        last_epoch=table["run_id"].map(last))


def headline_title(head: pd.DataFrame) -> str:
    """"Headline: NFT vs FlowGRPO", naming the other trained methods of the headline folder when it holds any (their
    speedups against both are the claimed-vs-measured table's rows)."""
    others = sorted(set(head["method"].dropna()) - {"nft", "flowgrpo", "cfg"})
    return "Headline: NFT vs FlowGRPO" + (f"; {', '.join(others)} against both" if others else "")


def build(results: Path | str, out: Path | str, n_boot: int = 1000, published_dir: Path | str = PUBLISHED_DIR,
          clock: str = "auto", headline: Path | str | None = None, monotone: bool = False) -> Path:
    """Write the plots and ``report.md`` into ``out``; returns the report path. ``headline`` defaults to
    ``<results>/headline`` (skipped when it holds no runs); the ablation section reads the labelled runs of
    ``<results>`` and every run of ``<results>/ablations``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    headline = Path(results) / "headline" if headline is None else Path(headline)
    abl_root = Path(results) / "ablations"
    df = load_results(results)
    runs = run_table(df, results)
    head = load_results(headline) if headline.is_dir() else df.iloc[0:0]
    head_runs = run_table(head, headline if headline.is_dir() else None)
    abl = load_results(abl_root) if abl_root.is_dir() else df.iloc[0:0]
    abl_runs = run_table(abl, abl_root if abl_root.is_dir() else None)
    sources = [f"`{root}` ({count(frame['run_id'].nunique(), 'run')})" for frame, root in
               ((head, headline), (df, results), (abl, abl_root)) if not frame.empty or root == results]
    lines = ["# Benchmark report", "",
             f"Regenerated by `python -m reports.build` from {', '.join(sources)} and "
             "`reports/published/`. Measured tables hold only this harness's runs; published tables only the "
             "papers' numbers (confidence: exact / transcribed / read-off-plot). Runs pool as seeds only when "
             "world, reward, method, ablation label and config fingerprint agree (`reports.groups`).", ""]
    published = load_published(published_dir)
    if not head.empty:
        lines += section(headline_title(head), head, head_runs, out, "headline", clock, n_boot, monotone,
                         a="nft", b="flowgrpo", published=published)
    main_df = df[df["ablation"].isna()]
    lines += section("Default comparison", main_df, runs, out, "default", clock, n_boot, monotone,
                     published=published)
    if main_df["run_id"].nunique() < df["run_id"].nunique():
        n_labelled = df["run_id"].nunique() - main_df["run_id"].nunique()
        lines += [f"Runs with an `ablation` label ({count(n_labelled, 'run')}) appear only under Ablations.", ""]
    lines += published_section(published)
    lines += ablation_section(pd.concat([df, abl], ignore_index=True), pd.concat([runs, abl_runs], ignore_index=True),
                              out, clock, n_boot)
    lines += ["## Runs", ""]
    for frame, frame_runs, root in ((head, head_runs, headline), (df, runs, results), (abl, abl_runs, abl_root)):
        if not frame.empty:
            lines += [f"`{root}`:", "", markdown_table(runs_table(frame, frame_runs, clock)), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reports.build", description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=existing_dir, default="results",
                        help="Results root written by bench.records (its runs, and its headline/ subfolder).")
    parser.add_argument("--out", default="reports/out", help="folder for the PNGs and report.md")
    parser.add_argument("--n-boot", type=at_least(1, "a number of bootstrap resamples, at least 1"), default=1000,
                        help="Bootstrap resamples (over seeds) for the speedup intervals.")
    parser.add_argument("--published", type=existing_dir, default=str(PUBLISHED_DIR),
                        help="Folder of the published numbers (CSV files with source and confidence).")
    parser.add_argument("--clock", choices=CLOCK_CHOICES, default="auto",
                        help="training clock: auto = CPU time for CPU-budgeted runs, else wall-clock")
    parser.add_argument("--headline", default=None, help="folder of the headline runs (default <results>/headline)")
    parser.add_argument("--monotone", action="store_true", help="isotonic curves before finding crossings")
    args = parser.parse_args(argv)
    print(build(args.results, args.out, n_boot=args.n_boot, published_dir=args.published, clock=args.clock,
                headline=args.headline, monotone=args.monotone))


if __name__ == "__main__":
    main()
