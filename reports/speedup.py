"""How much sooner does method A reach a score than method B? ("NFT reaches FlowGRPO's final score 25x sooner")

The paper's headline numbers (DiffusionNFT Fig. 1a) are read as: take a score, find the training time at which each
method first reaches it, and divide. :func:`speedup_table` does that per seed from our records and puts a bootstrap
interval over seeds around each ratio; :func:`speedup_markdown` renders it for a results folder, e.g. for the
README::

    python -m reports.speedup --results results/headline            # prints the NFT-vs-FlowGRPO tables
    python -c "from reports.speedup import speedup_markdown; print(speedup_markdown('results/headline'))"

Conventions, so every number can be checked by hand (grouping and clocks: :mod:`reports.groups`):

* **Curves.** A seed's curve is its evaluated rows: x = the panel's training clock in seconds (evaluation
  excluded; GPU-hours x 3600), y = the metric, sorted by x. ``start`` = mean over seeds of the first (epoch-0)
  evaluation; ``final`` = mean over seeds of the last evaluation; ``best`` = the highest point of the mean curve
  (:func:`mean_curve`), the level the method held on average at one time. A curve that rises to its end has best =
  final; one that peaks and declines (FlowGRPO's long shapes runs) has best > final.
* **Targets** of a pair (A, B): B's final, A's final, B's best and A's best (each only where it is above that
  method's final), each CFG baseline's level (the mean of its runs' only evaluation; a level, never a method with
  a time), then each method's own start + 0.02 / + 0.05 / + 0.10 (once, named after both, where the two
  start at the same score).
* **Time to target, per seed**: the first clock value where the curve is ``>= target``, linearly interpolated
  between the last evaluation below and the first at or above (``monotone=True`` first replaces y by its
  non-decreasing least-squares fit, so one lucky noisy evaluation cannot claim an early crossing). A seed that
  never gets there is **censored** at its last evaluation's clock: that time is a lower bound of its true time.
  A seed already there at its first evaluation has time 0 ("at start").
* **Speedup** = mean time of B's seeds / mean time of A's seeds (> 1: A is sooner). If a seed of B is censored
  (and none of A) the mean of B is a lower bound and the speedup a lower bound, printed ``> r``; if a seed of A is
  censored (and none of B), an upper bound ``< r``; if both sides have censored seeds there is no bound
  (``neither reached within ...`` when no seed reached it at all). When every seed of a side is at start the
  row says ``<method> starts above it`` instead of a ratio with a zero.
* **Interval**: 95 % percentile bootstrap over seeds: resample A's seeds and B's seeds independently with
  replacement (the same resamples for every target of a table), ratio of mean times. A bound's resamples are
  bounds in the same direction, so its interval is one-sided: ``> r [> low]`` gives the 2.5 % percentile of the
  resampled lower bounds (the true interval's lower end is at least that). One seed on a side gives no interval
  ("1 seed: no CI"). An end is ``unbounded`` when resamples made only of A seeds that start above the target
  divide by zero (percentiles are then taken on the sorted values, without interpolation).
* **Cells.** A time cell is the mean over seeds: ``> t (k/n seeds reached)`` when some seed is censored (t counts
  it at its last clock), ``0 (at start)`` when every seed starts above the target. Times print as seconds below 10
  minutes, minutes below 3 hours, hours above; every table names its clock. Columns and targets call a group by its
  label when that is short, else ``A`` / ``B``, which the caption spells out with the runs behind them.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from bench.records import load_results
from reports.groups import CLOCK_CHOICES, EPOCHS, Clock, Group, Panel, panels, run_table
from reports.markdown import count, markdown_table

SeedCurves = list[tuple[np.ndarray, np.ndarray]]  # per seed: (x in seconds, y), sorted by x
DELTAS = (0.02, 0.05, 0.10)  # targets: each method's own start + these
EXACT, LOWER, UPPER, NO_BOUND, NEITHER = "exact", "lower bound", "upper bound", "no bound", "neither reached"
A_START, B_START, BOTH_START = "A at start", "B at start", "both at start"


def isotonic(values: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit with equal weights (pool-adjacent-violators)."""
    blocks: list[list[float]] = []  # [sum, count] of each pooled run of points
    for value in np.asarray(values, dtype=float):
        blocks.append([value, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    if not blocks:
        return np.zeros(0)
    return np.concatenate([np.full(int(count), total / count) for total, count in blocks])


def time_to_reach(curve_x, curve_y, target: float, monotone: bool = False) -> float:
    """First x at which the curve is ``>= target``, interpolated linearly; ``nan`` if it never is.

    Points with a non-finite x or y are dropped and the rest sorted by x. ``monotone=True`` uses the isotonic fit of
    y instead of raw y (see the module docstring for why).
    """
    x = np.asarray(curve_x, dtype=float)
    y = np.asarray(curve_y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"curve_x and curve_y differ in shape: {x.shape} vs {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    order = np.argsort(x[keep], kind="stable")
    x, y = x[keep][order], y[keep][order]
    if monotone:
        y = isotonic(y)
    hits = np.flatnonzero(y >= target)
    if hits.size == 0:
        return math.nan
    i = int(hits[0])
    if i == 0:
        return float(x[0])
    # y[i-1] < target <= y[i], so the slope below is positive and the division safe
    return float(x[i - 1] + (target - y[i - 1]) * (x[i] - x[i - 1]) / (y[i] - y[i - 1]))


def curves(df: pd.DataFrame, metric_key: str, x_key: str) -> pd.DataFrame:
    """Per run and epoch, ``x`` and ``y`` where both were logged: columns run_id, method, seed, epoch, x, y.

    ``x_key="epoch"`` uses the epoch itself as x. Rows are sorted by run, then x (then epoch).
    """
    keys = [metric_key] if x_key == "epoch" else [metric_key, x_key]
    rows = df[df["key"].isin(keys)]
    columns = ["run_id", "method", "seed", "epoch", "x", "y"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    table = rows.groupby(["run_id", "epoch", "key"])["value"].last().unstack("key")
    if any(key not in table.columns for key in keys):
        return pd.DataFrame(columns=columns)
    table = table.reset_index()
    table["y"] = table[metric_key]
    table["x"] = table["epoch"] if x_key == "epoch" else table[x_key]
    table = table.dropna(subset=["x", "y"])
    runs = df[["run_id", "method", "seed"]].drop_duplicates("run_id")
    return runs.merge(table, on="run_id")[columns].sort_values(["run_id", "x", "epoch"], ignore_index=True)


def group_curves(df: pd.DataFrame, group: Group, metric: str, clock: Clock) -> SeedCurves:
    """One (x seconds, y) curve per kept seed of ``group`` (in seed order); seeds with no point are left out."""
    table = curves(df[df["run_id"].isin(group.runs)], metric, clock.key)
    out = []
    for run_id in group.runs:
        run = table[table["run_id"] == run_id]
        if len(run):
            out.append((run["x"].to_numpy(float) * clock.to_seconds, run["y"].to_numpy(float)))
    return out


def mean_curve(seed_curves: SeedCurves) -> tuple[np.ndarray, np.ndarray]:
    """The mean over seeds on a common grid: the sorted union of the seeds' x values inside the range that every
    seed covers, each seed linearly interpolated onto it (x of different seeds are never averaged)."""
    low = max(float(x.min()) for x, _ in seed_curves)
    high = min(float(x.max()) for x, _ in seed_curves)
    grid = np.unique(np.concatenate([x[(x >= low) & (x <= high)] for x, _ in seed_curves]))
    return grid, np.mean([np.interp(grid, x, y) for x, y in seed_curves], axis=0)


def start_level(seed_curves: SeedCurves) -> float:
    """Mean over seeds of the first evaluation."""
    return float(np.mean([y[0] for _, y in seed_curves]))


def final_level(seed_curves: SeedCurves) -> float:
    """Mean over seeds of the last evaluation."""
    return float(np.mean([y[-1] for _, y in seed_curves]))


def best_level(seed_curves: SeedCurves) -> float:
    """The highest point of the mean curve over seeds (on the common grid of :func:`mean_curve`)."""
    return float(mean_curve(seed_curves)[1].max())


@dataclass(frozen=True)
class SeedTimes:
    """Per seed: time to a target in seconds (censored seeds: their last evaluation's clock) and whether reached."""

    times: np.ndarray
    reached: np.ndarray

    @property
    def censored(self) -> bool:
        return not bool(self.reached.all())

    @property
    def at_start(self) -> bool:
        return bool(self.reached.all() and (self.times == 0).all())


def seed_times(seed_curves: SeedCurves, target: float, monotone: bool = False) -> SeedTimes:
    """Time to ``target`` per seed, censored at the last evaluation where not reached (module docstring)."""
    times = np.array([time_to_reach(x, y, target, monotone) for x, y in seed_curves])
    reached = np.isfinite(times)
    last = np.array([x[-1] for x, _ in seed_curves])
    return SeedTimes(np.where(reached, times, last), reached)


@dataclass(frozen=True)
class Speedup:
    """``point`` = mean time B / mean time A; ``kind`` says whether it is a value, a bound or a sentence's case.
    ``low`` / ``high``: the percentile interval (nan: none; a bound's interval is open on one side)."""

    kind: str
    point: float
    low: float = math.nan
    high: float = math.nan


def _kind(a: SeedTimes, b: SeedTimes) -> str:
    """Which case of the module docstring's "Speedup" rule a target falls in."""
    if a.at_start or b.at_start:
        return BOTH_START if a.at_start and b.at_start else (A_START if a.at_start else B_START)
    if (a.censored and b.censored) or (a.censored and a.times.mean() == 0):  # "< b / 0" bounds nothing
        return NO_BOUND if a.reached.any() or b.reached.any() else NEITHER
    return UPPER if a.censored else (LOWER if b.censored else EXACT)


def estimate(a: SeedTimes, b: SeedTimes, resamples: tuple[np.ndarray, np.ndarray] | None, ci: float) -> Speedup:
    """The speedup of A over B at one target; ``resamples`` = seed indices of A and of B, one row per resample
    (None: no interval)."""
    kind = _kind(a, b)
    if kind not in (EXACT, LOWER, UPPER):
        return Speedup(kind, math.nan)
    point = float(b.times.mean() / a.times.mean())
    if resamples is None:
        return Speedup(kind, point)
    with np.errstate(divide="ignore"):
        ratios = b.times[resamples[1]].mean(1) / a.times[resamples[0]].mean(1)
    method = "linear" if np.isfinite(ratios).all() else "inverted_cdf"  # no inf - inf interpolation
    tail = (1 - ci) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail], method=method)
    if kind == LOWER:
        return Speedup(kind, point, float(low), math.inf)
    if kind == UPPER:
        return Speedup(kind, point, 0.0, float(high))
    return Speedup(kind, point, float(low), float(high))


def bootstrap_indices(n_a: int, n_b: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Independent resamples with replacement of A's and B's seeds ([n_boot, n] each); None with one seed a side."""
    if min(n_a, n_b) < 2 or n_boot < 1:
        return None
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_a, (n_boot, n_a)), rng.integers(0, n_b, (n_boot, n_b))


def targets(a: SeedCurves, b: SeedCurves, a_label: str, b_label: str,
            levels: Sequence[tuple[str, float]] = ()) -> list[tuple[str, float]]:
    """(name, value) of every target of the pair, in table order (module docstring)."""
    found = [(f"{b_label} final", final_level(b)), (f"{a_label} final", final_level(a))]
    for label, own in ((b_label, b), (a_label, a)):
        best = best_level(own)
        if best > final_level(own) + 1e-12:
            found.append((f"{label} best", best))
    found += levels
    starts = [(a_label, start_level(a)), (b_label, start_level(b))]
    if abs(starts[0][1] - starts[1][1]) < 1e-9:  # one start (same base model and evaluation): its targets once
        starts = [(f"{a_label} / {b_label}", starts[0][1])]
    for label, start in starts:
        found += [(f"{label} start + {delta:.2f}", start + delta) for delta in DELTAS]
    return found


def time_unit(seconds: float) -> tuple[str, float]:
    """(unit, seconds per unit) for a duration: s below 10 min, min below 3 h, h above."""
    if seconds < 600:
        return "s", 1.0
    return ("min", 60.0) if seconds < 3 * 3600 else ("h", 3600.0)


def format_seconds(seconds: float) -> str:
    """``42 s``, ``4.0 min``, ``2.5 h`` (see :func:`time_unit`); two significant digits below 10 units."""
    unit, size = time_unit(seconds)
    value = seconds / size
    return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"


def format_ratio(ratio: float) -> str:
    """``12x``, ``4.4x``, ``0.31x``; ``unbounded`` for an infinite end of an interval."""
    if math.isinf(ratio):
        return "unbounded"
    if ratio >= 9.95:  # 9.97 prints as 10x, not 10.0x
        return f"{ratio:.0f}x"
    return f"{ratio:.1f}x" if ratio >= 0.995 else f"{ratio:.2g}x"


def time_cell(times: SeedTimes) -> str:
    """Mean time over seeds; ``0 (at start)``; ``> t (k/n seeds reached)`` when some seed is censored."""
    if times.at_start:
        return "0 (at start)"
    text = format_seconds(float(times.times.mean()))
    if not times.censored:
        return text
    k, n = int(times.reached.sum()), len(times.reached)
    return f"> {text} ({'not reached' if k == 0 else f'{k}/{n} seeds reached'})"


def speedup_cell(result: Speedup, a: SeedTimes, b: SeedTimes, a_label: str, b_label: str) -> str:
    """The speedup column's text for one target (see the module docstring for every case)."""
    sentences = {
        A_START: f"{a_label} starts above it", B_START: f"{b_label} starts above it",
        BOTH_START: "both start above it",
        NEITHER: f"neither reached within {format_seconds(a.times.mean())} ({a_label}) / "
                 f"{format_seconds(b.times.mean())} ({b_label})",
        NO_BOUND: f"no bound: censored on both sides ({a_label} {int(a.reached.sum())}/{len(a.reached)}, "
                  f"{b_label} {int(b.reached.sum())}/{len(b.reached)} seeds reached)",
    }
    if result.kind in sentences:
        return sentences[result.kind]
    sign = {EXACT: "", LOWER: "> ", UPPER: "< "}[result.kind]
    note = {EXACT: "", LOWER: f"bound: {b_label} censored", UPPER: f"bound: {a_label} censored"}[result.kind]
    if math.isnan(result.low):
        note = "; ".join(filter(None, [note, "1 seed: no CI"]))
        interval = ""
    elif result.kind == EXACT:
        interval = f" [{format_ratio(result.low)} .. {format_ratio(result.high)}]"
    else:
        interval = f" [{sign}{format_ratio(result.low if result.kind == LOWER else result.high)}]"
    return f"{sign}{format_ratio(result.point)}{interval}" + (f" ({note})" if note else "")


def speedup_table(a: SeedCurves, b: SeedCurves, a_label: str = "A", b_label: str = "B",
                  levels: Sequence[tuple[str, float]] = (), n_boot: int = 1000, seed: int = 0,
                  monotone: bool = False, ci: float = 0.95) -> pd.DataFrame:
    """One row per target (:func:`targets`): numbers (``time_a``/``time_b`` mean seconds, censored seeds at their
    last clock; ``reached_a``/``reached_b`` seeds that reached it; ``kind``, ``speedup``, ``ci_low``, ``ci_high``)
    and the cells of the printed table (``target_text`` ... ``seeds_text``)."""
    if not a or not b:
        raise ValueError(f"no evaluated curve for {a_label if not a else b_label}")
    resamples = bootstrap_indices(len(a), len(b), n_boot, seed)
    rows = []
    for name, value in targets(a, b, a_label, b_label, levels):
        times_a, times_b = seed_times(a, value, monotone), seed_times(b, value, monotone)
        result = estimate(times_a, times_b, resamples, ci)
        rows.append({
            "target": name, "target_value": value, "time_a": float(times_a.times.mean()),
            "time_b": float(times_b.times.mean()), "reached_a": int(times_a.reached.sum()),
            "reached_b": int(times_b.reached.sum()), "n_a": len(a), "n_b": len(b), "kind": result.kind,
            "speedup": result.point, "ci_low": result.low, "ci_high": result.high,
            "target_text": f"{name} = {value:.3f}", "time_a_text": time_cell(times_a),
            "time_b_text": time_cell(times_b), "speedup_text": speedup_cell(result, times_a, times_b, a_label, b_label),
            "seeds_text": f"{len(a)} / {len(b)}",
        })
    return pd.DataFrame(rows)


def table_markdown(table: pd.DataFrame, a_label: str, b_label: str, clock: Clock, ci: float = 0.95) -> str:
    """The printed columns of a :func:`speedup_table`, headers naming the clock."""
    headers = {"target_text": "target", "time_a_text": f"time {a_label} ({clock.short})",
               "time_b_text": f"time {b_label} ({clock.short})", "speedup_text": f"speedup [{ci * 100:g} % CI]",
               "seeds_text": f"seeds ({a_label} / {b_label})"}
    return markdown_table(table[list(headers)].rename(columns=headers))


def baseline_levels(df: pd.DataFrame, panel: Panel, metric: str) -> list[tuple[str, float]]:
    """(label, level) of each CFG baseline group of the panel: the mean over its seeds of its last evaluation."""
    levels = []
    for group in panel.baselines:
        seed_curves = group_curves(df, group, metric, EPOCHS)
        if seed_curves:
            levels.append((group.label, final_level(seed_curves)))
    return levels


def short_name(label: str, letter: str) -> str:
    """What a table calls a group: its label when short, else ``letter`` (A / B, defined in the caption)."""
    return label if len(label) <= 24 else letter


def pair_markdown(df: pd.DataFrame, panel: Panel, a: Group, b: Group, n_boot: int = 1000, seed: int = 0,
                  monotone: bool = False, ci: float = 0.95) -> str:
    """Caption and speedup table of one pair of groups in one panel (a sentence when a side has no curve)."""
    metric = panel.metric
    sides = "; ".join(f"{letter} = {g.label} ({count(len(g.runs), 'seed')}: {', '.join(g.runs)})"
                      for letter, g in (("A", a), ("B", b)))
    title = f"**{panel.reward} ({panel.world}): {a.label} vs {b.label}**"
    curves_a = group_curves(df, a, metric, panel.clock) if metric else []
    curves_b = group_curves(df, b, metric, panel.clock) if metric else []
    if not curves_a or not curves_b:
        missing = a.label if not curves_a else b.label
        return f"{title}: no speedup: {missing} logs no `{metric}` with `{panel.clock.key}`."
    name_a, name_b = short_name(a.label, "A"), short_name(b.label, "B")
    table = speedup_table(curves_a, curves_b, name_a, name_b, baseline_levels(df, panel, metric), n_boot, seed,
                          monotone, ci)
    caption = (f"{title} -- {sides}. Metric `{metric}`{' (isotonic fit)' if monotone else ''}; clock: "
               f"{panel.clock.description} (`{panel.clock.key}`). Speedup = time B / time A (> 1: A sooner); times "
               "are means over seeds; `>` / `<` mark bounds (a seed that never reached a target counts with its last "
               "evaluation's clock, a lower bound of its time).")
    return caption + "\n\n" + table_markdown(table, name_a, name_b, panel.clock, ci)


def speedup_markdown(source: pd.DataFrame | Path | str, a: str | None = "nft", b: str | None = "flowgrpo",
                     clock: str = "auto", n_boot: int = 1000, seed: int = 0, monotone: bool = False,
                     ci: float = 0.95) -> str:
    """Speedup tables of method ``a`` over method ``b`` (None: every pair) for every (world, reward) of ``source``:
    a results folder (meta.json configs give fingerprints and CPU budgets) or a frame of records."""
    df = source if isinstance(source, pd.DataFrame) else load_results(source)
    runs = run_table(df, None if isinstance(source, pd.DataFrame) else source)
    blocks = [pair_markdown(df, panel, x, y, n_boot, seed, monotone, ci)
              for panel in panels(df, runs, clock) for x, y in panel.pairs(a, b)]
    return "\n\n".join(blocks) or f"_No pair of `{a or 'any'}` and `{b or 'any'}` runs with evaluations found._"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the speedup tables of a results folder as Markdown.")
    parser.add_argument("--results", default="results/headline", help="results root to read")
    parser.add_argument("--a", default="nft", help="method A (the one whose speedup is reported)")
    parser.add_argument("--b", default="flowgrpo", help="method B")
    parser.add_argument("--clock", choices=CLOCK_CHOICES, default="auto", help="training clock (see reports.groups)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--monotone", action="store_true", help="isotonic curves before finding crossings")
    args = parser.parse_args(argv)
    print(speedup_markdown(args.results, args.a, args.b, args.clock, args.n_boot, monotone=args.monotone))


if __name__ == "__main__":
    main()
