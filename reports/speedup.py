"""How much sooner does method A reach a score than method B? ("NFT reaches FlowGRPO's final score 25x sooner")

The paper's headline numbers (DiffusionNFT Fig. 1a) are read as: take B's final score, find the GPU-hours at which
each method's curve first reaches it, and divide. :func:`speedup_table` does exactly that from our records, in both
directions, and puts a bootstrap interval over seeds around each ratio.

Conventions, so the numbers can be checked by hand:

* A curve "reaches" a target at the first x where it is ``>= target`` (higher is better), linearly interpolated
  between the last point below and the first point at or above. The raw curve is used unless ``monotone=True``,
  which first replaces it by its least-squares non-decreasing fit (isotonic regression), so that one lucky noisy
  point cannot claim an early crossing. A curve that never gets there gives ``nan``.
* A method's curve is the mean over its runs (seeds) at each epoch, of both the metric and x; only epochs that
  every run of the method logged are used. "Final" is that mean curve's value at its last epoch.
* ``speedup = x_b / x_a`` in every row: above 1 means A needed less x than B.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


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

    ``x_key="epoch"`` uses the epoch itself as x.
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
    return runs.merge(table, on="run_id")[columns].sort_values(["run_id", "epoch"], ignore_index=True)


def _stack(run_curves: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y), each [n_runs, n_epochs], over the epochs that every run logged."""
    runs_per_epoch = run_curves.groupby("epoch")["run_id"].nunique()
    shared = runs_per_epoch.index[runs_per_epoch == run_curves["run_id"].nunique()]
    kept = run_curves[run_curves["epoch"].isin(shared)]
    x = kept.pivot(index="run_id", columns="epoch", values="x")
    y = kept.pivot(index="run_id", columns="epoch", values="y")
    return x.to_numpy(dtype=float), y.to_numpy(dtype=float)


def _one_estimate(xa, ya, xb, yb, monotone: bool) -> list[tuple[float, float, float, float, float]]:
    """For targets (B's final, A's final): (target, x_a, x_b, speedup, x_b_max) from the mean curves."""
    out = []
    for target in (yb[-1], ya[-1]):
        x_a = time_to_reach(xa, ya, target, monotone)
        x_b = time_to_reach(xb, yb, target, monotone)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = float(np.float64(x_b) / np.float64(x_a))
        out.append((float(target), x_a, x_b, ratio, float(np.nanmax(xb))))
    return out


def speedup_table(
    df: pd.DataFrame,
    metric_key: str,
    x_key: str = "cum/gpu_hours",
    a: str = "nft",
    b: str = "flowgrpo",
    n_boot: int = 1000,
    seed: int = 0,
    monotone: bool = False,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Time for A and B to reach B's final score, and A's final score, with ``speedup = x_b / x_a``.

    One row per target (``"<b> final"`` then ``"<a> final"``); ``x_a`` / ``x_b`` are in units of ``x_key``.

    ``df`` is tidy records of ONE world and reward (filter first: a ratio across rewards means nothing).
    The interval resamples runs (seeds) with replacement within each method, recomputes the mean curves, the
    targets and the ratio, and takes the central ``ci`` percentiles of the ratios that are finite;
    ``boot_reached`` is the fraction of resamples where both methods reached the target (the interval is
    conditional on that). When B never reaches the target, ``lower_bound = max x of B / x_a`` bounds the speedup.
    """
    for column in ("world", "reward"):
        if column in df.columns and df[column].nunique() > 1:
            raise ValueError(f"speedup_table needs one {column}; got {sorted(df[column].unique())}: filter first")
    all_curves = curves(df[df["method"].isin([a, b])], metric_key, x_key)
    stacks = {}
    for method in (a, b):
        method_curves = all_curves[all_curves["method"] == method]
        if method_curves.empty:
            raise ValueError(f"no runs of method {method!r} log both {metric_key!r} and {x_key!r}")
        stacks[method] = _stack(method_curves)
        if stacks[method][0].shape[1] == 0:
            raise ValueError(f"the runs of {method!r} share no epoch with both {metric_key!r} and {x_key!r}")
    (xa, ya), (xb, yb) = stacks[a], stacks[b]
    point = _one_estimate(xa.mean(0), ya.mean(0), xb.mean(0), yb.mean(0), monotone)

    rng = np.random.default_rng(seed)
    boot = np.full((n_boot, 2), np.nan)
    for i in range(n_boot):
        ia = rng.integers(0, len(xa), len(xa))
        ib = rng.integers(0, len(xb), len(xb))
        sample = _one_estimate(xa[ia].mean(0), ya[ia].mean(0), xb[ib].mean(0), yb[ib].mean(0), monotone)
        boot[i] = [row[3] for row in sample]

    tail = 100 * (1 - ci) / 2
    rows = []
    for j, (name, (target, x_a, x_b, ratio, x_b_max)) in enumerate(zip((f"{b} final", f"{a} final"), point)):
        finite = boot[:, j][np.isfinite(boot[:, j])]
        low, high = np.percentile(finite, [tail, 100 - tail]) if finite.size else (math.nan, math.nan)
        never = math.isnan(x_b) and not math.isnan(x_a) and x_a > 0
        rows.append(
            {
                "metric": metric_key,
                "x_key": x_key,
                "a": a,
                "b": b,
                "target": name,
                "target_value": target,
                "x_a": x_a,
                "x_b": x_b,
                "speedup": ratio,
                "ci_low": float(low),
                "ci_high": float(high),
                "boot_reached": finite.size / n_boot if n_boot else math.nan,
                "lower_bound": x_b_max / x_a if never else math.nan,
                "n_runs_a": len(xa),
                "n_runs_b": len(xb),
            }
        )
    return pd.DataFrame(rows)
