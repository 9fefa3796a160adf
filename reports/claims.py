"""Claimed speedups (the papers') beside measured ones (this harness), one table each, rows in the same order.

Every method paper in this harness claims "N x faster than FlowGRPO": the GPU-hours (or steps) FlowGRPO needs to
reach its own final score, divided by the method's. In the papers that final score is also the baseline's best
(their FlowGRPO curves rise to the end). The measured counterpart is the speedup table's target "B best" with
B = FlowGRPO (and, for the newer methods, B = NFT): the highest point of B's mean curve, which is "B final" when B
ends at its peak; time for B to reach it over time for the method, with the bootstrap interval or bound of
:mod:`reports.speedup`. (A baseline that peaks and then declines would otherwise hand the method an easy target,
its decayed final score.) The two never share a row: a
claim is about SD3.5-M on a paper's task, a measurement about this harness's world (often the CPU shapes world).

Claims are the published CSV rows whose ``metric`` is ``speedup_vs_<method>`` (``reports/published/``); their
``model`` names the paper's method (:data:`CLAIM_MODELS` maps it to the registry name).
"""
from __future__ import annotations

import pandas as pd

from reports.groups import Group, Panel
from reports.markdown import markdown_table
from reports.speedup import baseline_levels, group_curves, speedup_table

CLAIM_MODELS = {"DiffusionNFT": "nft", "AWM": "awm", "DGPO": "dgpo", "TempFlow-GRPO": "tempflow-grpo",
                "GRPO-Guard": "grpo-guard", "Flow-GRPO-Fast": "flowgrpo-fast"}
"""Published ``model`` -> registry method name."""
BASELINES = ("flowgrpo", "nft")
"""Measured speedups are against these methods' groups (a method is never compared with itself)."""


def claims(published: pd.DataFrame) -> pd.DataFrame:
    """Speedup claims: columns method, vs, reward (empty: any task), claimed (e.g. ``24x``), source, confidence."""
    rows = published[published["metric"].astype(str).str.startswith("speedup_vs_")]
    out = pd.DataFrame({
        "method": rows["model"].map(CLAIM_MODELS).fillna(rows["model"]),
        "vs": rows["metric"].str.removeprefix("speedup_vs_"),
        "reward": rows["reward"].fillna("any task"),
        "claimed": [f"{v:g}x" + (f" ({n})" if isinstance(n, str) and n else "")
                    for v, n in zip(rows["value"], rows["note"])],
        "source": rows["source"], "confidence": rows["confidence"],
    })
    return out.reset_index(drop=True)


def measured_pairs(panel: Panel) -> list[tuple[Group, Group]]:
    """(method group, baseline group) for every trained group of the panel against each FlowGRPO and NFT group."""
    return [(x, y) for y in panel.trained if y.method in BASELINES
            for x in panel.trained if x.method != y.method and not (x.method == "flowgrpo" and y.method == "nft")]


def measured_row(df: pd.DataFrame, panel: Panel, x: Group, y: Group, n_boot: int = 1000) -> dict | None:
    """The row of the speedup table at target "``y`` best" (or "``y`` final" where ``y`` ends at its peak) for ``x``
    (A) against ``y`` (B); None without curves."""
    curves_x = group_curves(df, x, panel.metric, panel.clock)
    curves_y = group_curves(df, y, panel.metric, panel.clock)
    if not curves_x or not curves_y:
        return None
    table = speedup_table(curves_x, curves_y, x.label, y.label, baseline_levels(df, panel, panel.metric), n_boot)
    best = table[table["target"] == f"{y.label} best"]
    row = (best if len(best) else table[table["target"] == f"{y.label} final"]).iloc[0]
    return {"method": x.label, "vs": y.label, "world (reward)": f"{panel.world} ({panel.reward})",
            "target": row["target_text"], f"time method ({panel.clock.short})": row["time_a_text"],
            f"time vs ({panel.clock.short})": row["time_b_text"], "speedup [95 % CI]": row["speedup_text"],
            "seeds": row["seeds_text"], "_method": x.method, "_vs": y.method}


def claims_section(df: pd.DataFrame, all_panels: list[Panel], published: pd.DataFrame, n_boot: int = 1000
                   ) -> list[str]:
    """Markdown: the measured table (each method vs FlowGRPO and vs NFT, at the baseline's best score) and,
    under it, the papers' claims for the same (method, baseline) pairs in the same order."""
    lines = ["### Claimed vs measured speedup", ""]
    measured = [r for p in all_panels if p.metric for x, y in measured_pairs(p)
                if (r := measured_row(df, p, x, y, n_boot)) is not None]
    if not measured:
        return lines + ["_No method has a measured curve beside FlowGRPO or NFT here._", ""]
    table = pd.DataFrame(measured)
    said = claims(published)
    order = {(m, v): i for i, (m, v) in enumerate(zip(table["_method"], table["_vs"]))}
    rewards = {p.reward for p in all_panels} | {"any task"}  # a claim about OCR says nothing about a GenEval panel
    said = said[[(m, v) in order and r in rewards for m, v, r in zip(said["method"], said["vs"], said["reward"])]]
    said = said.assign(_order=[order[(m, v)] for m, v in zip(said["method"], said["vs"])]).sort_values(
        "_order", kind="stable")
    lines += ["Measured (this harness): time for the baseline to reach its own best score (the peak of its mean "
              "curve over seeds; its final score where it ends at its peak, as the papers' baselines do) over the "
              "method's time to reach it (the papers' definition), bootstrap over seeds; `>` marks a bound.", "",
              markdown_table(table.drop(columns=["_method", "_vs"])), ""]
    if said.empty:
        return lines + ["Claimed: no paper in `reports/published/` claims a speedup for these pairs.", ""]
    lines += ["Claimed (the papers, SD3.5-M and their own clocks; not comparable row by row with a toy world):", "",
              markdown_table(said.drop(columns=["_order"]).fillna("")), ""]
    return lines
