"""The papers' ablations beside ours: one panel per ablation family and a findings table.

Runs carry an ``ablation`` label (``ablation=<label>`` on the command line; `experiments/ablations.txt`):
``"<family>: <variant>"`` for a changed setting (``"nft sampler: SDE"``) and ``"<method> preset"`` for the runs of
the unchanged preset that every family of that method is compared with (``"nft preset"``). A family's panel holds
its variants and its reference; the findings table compares each variant with its reference at the final
evaluation:

    effect = mean over the variant's seeds of their last evaluation - the same for the reference
    95 % interval: effect +- t(0.975, dof) * s * sqrt(1/n_variant + 1/n_reference), where s is the seed-to-seed
                   standard deviation pooled over every group of the same method in the study (the within-group
                   estimate of a one-way ANOVA, dof = sum of (seeds - 1)); :func:`pooled_seed_sd`, :func:`t_interval`
    reproduced: "yes" when the interval lies on the paper's side of 0, "no" when it lies on the other side,
                "inconclusive at this budget" when it contains 0, "no claim" when the paper states none.

Why pooled: the study runs 2 seeds a side for most ablations. A bootstrap over 2 seeds only spans the 4 seed-pair
differences (its "95 %" interval excludes 0 whenever both variant seeds lie beyond both reference seeds, which
happens by chance 1 time in 6), and a t interval from one pair has 1 degree of freedom (t = 12.7). Pooling the
spread over a method's ~10 groups assumes seeds scatter alike across its variants and gives the interval ~10
degrees of freedom. The bootstrap interval (:func:`effect`) is printed beside it, with each seed's final.

The findings table alone, without the plots of ``python -m reports.build``:

    python -m reports.ablations --results results/ablations

A finding is never adjusted to agree with the paper: :data:`FINDINGS` holds the papers' statements as written in
``../shared/spec/`` (source given per row), and the verdict is computed only from the records.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.cli import at_least, existing_dir
from bench.records import load_results
from reports.groups import CLOCK_CHOICES, Group, Panel, panels, run_table
from reports.markdown import markdown_table
from reports.speedup import group_curves


@dataclass(frozen=True)
class Finding:
    """One ablation the papers report, as a comparison of two labelled groups of runs."""

    family: str
    """Panel it is drawn in, e.g. "nft sampler"."""
    variant: str
    """Ablation label of the changed runs, e.g. "nft sampler: SDE"."""
    reference: str
    """Ablation label of the runs it is compared with, e.g. "nft preset"."""
    claim: str
    """The paper's stated finding, in words."""
    direction: int | None
    """The paper's side: -1 the variant is worse than the reference, +1 better, None no stated claim."""
    source: str
    """Where the claim is written."""


NFT_SPEC = "DiffusionNFT paper, as recorded in ../shared/spec/diffusionnft.md (Ablations)"
FINDINGS: tuple[Finding, ...] = (
    Finding("nft sampler", "nft sampler: 1st-order ODE", "nft preset",
            "2nd-order ODE > 1st-order ODE > SDE (2nd-order slightly ahead on GenEval)", -1, NFT_SPEC),
    Finding("nft sampler", "nft sampler: SDE", "nft preset", "2nd-order ODE > 1st-order ODE > SDE", -1, NFT_SPEC),
    Finding("nft decay", "nft decay: d = 0 (on-policy)", "nft preset", "d = 0 (fully on-policy) collapses", -1,
            NFT_SPEC),
    Finding("nft decay", "nft decay: constant 0.9", "nft preset", "a constant 0.9 barely learns", -1, NFT_SPEC),
    Finding("nft decay", "nft decay: reference schedule", "nft preset",
            "none: the reference's min(0.001 s, 0.5); the shapes preset ramps 10x faster (docs/tuning.md)", None,
            "bench/config.py SHAPES_PRESET"),
    Finding("nft negative branch", "nft negative branch: removed", "nft preset",
            "removing the negative branch collapses", -1, NFT_SPEC),
    Finding("nft weighting", "nft weighting: w = 1 - t", "nft preset", "w = 1 - t collapses; adaptive is best", -1,
            NFT_SPEC),
    Finding("nft weighting", "nft weighting: velocity MSE", "nft preset", "adaptive weighting is best", -1, NFT_SPEC),
    Finding("nft beta", "nft beta: 0.1", "nft preset", "beta 1.0 best (0.01 unstable, 10 slow)", -1, NFT_SPEC),
    Finding("nft cfg", "nft cfg: CFG 4.5 at rollout", "nft preset",
            "none stated: DiffusionNFT trains CFG-free (its rollout has no CFG)", None, NFT_SPEC),
    Finding("flowgrpo kl", "flowgrpo kl: 0", "flowgrpo preset",
            "none stated for accuracy: the KL term guards image quality against reward hacking", None,
            "FlowGRPO paper (arXiv 2505.05470); not recorded in ../shared/spec"),
    Finding("flowgrpo noise", "flowgrpo noise: a = 0.3", "flowgrpo preset", "none recorded in ../shared/spec", None,
            "../shared/spec/flowgrpo.md"),
    Finding("flowgrpo noise", "flowgrpo noise: a = 1.0", "flowgrpo preset", "none recorded in ../shared/spec", None,
            "../shared/spec/flowgrpo.md"),
    Finding("flowgrpo timesteps", "flowgrpo timesteps: all 9 steps", "flowgrpo preset",
            "none recorded in ../shared/spec (Flow-GRPO-Fast trains a window of 2-3 steps)", None,
            "../shared/spec/flowgrpo.md"),
    Finding("flowgrpo timesteps", "flowgrpo timesteps: window of 3", "flowgrpo preset",
            "none recorded in ../shared/spec (the preset with SDE and training only on a window of 3 steps)", None,
            "../shared/spec/flowgrpo.md"),
    Finding("flowgrpo timesteps", "flowgrpo timesteps: Fast (CPS window of 3)", "flowgrpo preset",
            "none recorded in ../shared/spec (the reference's Fast config whole: CFG-free, so evaluated without CFG "
            "against a CFG 4.5 preset)", None, "../shared/spec/flowgrpo.md"),
)


def finals(df: pd.DataFrame, group: Group, metric: str, panel: Panel) -> np.ndarray:
    """Each seed's last evaluation of ``metric``."""
    return np.array([y[-1] for _, y in group_curves(df, group, metric, panel.clock)])


def effect(variant: np.ndarray, reference: np.ndarray, n_boot: int = 2000, seed: int = 0, ci: float = 0.95
           ) -> tuple[float, float, float]:
    """(mean difference, interval low, interval high); the interval is nan with fewer than 2 seeds a side."""
    point = float(variant.mean() - reference.mean())
    if min(len(variant), len(reference)) < 2:
        return point, math.nan, math.nan
    rng = np.random.default_rng(seed)
    diffs = (variant[rng.integers(0, len(variant), (n_boot, len(variant)))].mean(1)
             - reference[rng.integers(0, len(reference), (n_boot, len(reference)))].mean(1))
    low, high = np.quantile(diffs, [(1 - ci) / 2, 1 - (1 - ci) / 2])
    return point, float(low), float(high)


def pooled_seed_sd(samples: list[np.ndarray]) -> tuple[float, int]:
    """(s, dof): the seed-to-seed standard deviation pooled over groups, s^2 = sum over groups of the squared
    deviations from the group's mean / dof, dof = sum of (seeds - 1); (nan, 0) when no group has 2 seeds."""
    dof = sum(len(x) - 1 for x in samples if len(x) > 1)
    if dof == 0:
        return math.nan, 0
    squares = sum(float(((x - x.mean()) ** 2).sum()) for x in samples if len(x) > 1)
    return math.sqrt(squares / dof), dof


def t_interval(variant: np.ndarray, reference: np.ndarray, sd: float, dof: int, ci: float = 0.95
               ) -> tuple[float, float, float]:
    """(mean difference, low, high) with the pooled ``sd`` of ``dof`` degrees of freedom; nan bounds when dof = 0."""
    point = float(variant.mean() - reference.mean())
    if dof < 1 or math.isnan(sd):
        return point, math.nan, math.nan
    half = float(stats.t.ppf(1 - (1 - ci) / 2, dof)) * sd * math.sqrt(1 / len(variant) + 1 / len(reference))
    return point, point - half, point + half


def verdict(direction: int | None, low: float, high: float) -> str:
    """yes / no / inconclusive at this budget / no claim (module docstring)."""
    if direction is None:
        return "no claim"
    if math.isnan(low):
        return "inconclusive at this budget (seed spread not measured)"
    if low > 0 or high < 0:
        return "yes" if (low > 0) == (direction > 0) else "no"
    return "inconclusive at this budget"


def labelled(panel: Panel) -> dict[str, Group]:
    """Ablation label -> its group (the first, where settings split one label)."""
    out: dict[str, Group] = {}
    for group in panel.trained:
        if group.ablation is not None:
            out.setdefault(group.ablation, group)
    return out


def family_of(label: str) -> str | None:
    """``"nft sampler: SDE"`` -> ``"nft sampler"``; a reference label has no family."""
    return label.split(": ", 1)[0] if ": " in label else None


def method_of(label: str) -> str:
    """``"nft sampler: SDE"`` and ``"nft preset"`` -> ``"nft"``: the method whose preset a label modifies."""
    return label.split()[0]


def seed_finals(variant: np.ndarray, reference: np.ndarray) -> str:
    """``"0.300, 0.320 / 0.400, 0.420"``: the values the effect is computed from, in seed order."""
    return " / ".join(", ".join(f"{v:.3f}" for v in side) for side in (variant, reference))


def findings_table(df: pd.DataFrame, panel: Panel, n_boot: int = 2000) -> pd.DataFrame:
    """One row per finding whose variant and reference both ran in ``panel``, then one per other labelled variant
    (no claim), with the measured effect on the panel's metric."""
    rows = []
    if not panel.metric:
        return pd.DataFrame(rows)
    groups = labelled(panel)
    known = {f.variant: f for f in FINDINGS}
    extra = [Finding(family_of(label) or label, label, f"{method_of(label)} preset", "none recorded", None, "")
             for label in groups if family_of(label) and label not in known]
    final = {label: finals(df, group, panel.metric, panel) for label, group in groups.items()}
    spread = {method: pooled_seed_sd([x for label, x in final.items() if method_of(label) == method])
              for method in {method_of(label) for label in final}}
    for finding in [*FINDINGS, *extra]:
        a, b = final.get(finding.variant), final.get(finding.reference)
        if a is None or b is None or not len(a) or not len(b):
            continue
        sd, dof = spread[method_of(finding.reference)]
        point, low, high = t_interval(a, b, sd, dof)
        _, boot_low, boot_high = effect(a, b, n_boot)
        rows.append({"ablation": finding.variant, "vs": finding.reference, "paper's finding": finding.claim,
                     "measured effect (final, variant - reference)": f"{_r(point):+.3f}{_bounds(low, high)}",
                     "seeds": f"{len(a)} / {len(b)}", "each seed's final (variant / reference)": seed_finals(a, b),
                     "pooled seed sd (dof)": "" if dof == 0 else f"{sd:.3f} ({dof})",
                     "bootstrap interval": _bounds(boot_low, boot_high).strip(),
                     # judged on the printed (3-decimal) bounds, so a verdict never disagrees with its interval
                     "reproduced": verdict(finding.direction, _r(low), _r(high)), "source": finding.source})
    return pd.DataFrame(rows)


def _r(value: float) -> float:
    return round(value, 3) + 0.0  # + 0.0: no "-0.000"


def _bounds(low: float, high: float) -> str:
    return "" if math.isnan(low) else f" [{_r(low):+.3f} .. {_r(high):+.3f}]"


def family_panels(panel: Panel) -> dict[str, Panel]:
    """Family -> a panel of its variants and the references they are compared with."""
    groups = labelled(panel)
    refs = {f.variant: f.reference for f in FINDINGS}
    out: dict[str, Panel] = {}
    for label, group in groups.items():
        family = family_of(label)
        if family is None:
            continue
        members = out.setdefault(family, Panel(panel.world, panel.reward, panel.clock, panel.metric, [])).groups
        reference = groups.get(refs.get(label, f"{method_of(label)} preset"))
        for g in (reference, group):
            if g is not None and g not in members:
                members.append(g)
    return out


def labelled_panels(df: pd.DataFrame, runs: pd.DataFrame, clock: str = "auto") -> list[tuple[Panel, pd.DataFrame]]:
    """(panel, its rows) per (world, reward) of the runs of ``df`` that carry an ablation label."""
    labelled = df[df["ablation"].notna()] if "ablation" in df.columns else df.iloc[0:0]
    if labelled.empty:
        return []
    return [(panel, labelled[(labelled["world"] == panel.world) & (labelled["reward"] == panel.reward)])
            for panel in panels(labelled, runs, clock)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reports.ablations", description=(
        "Print the findings table of the labelled runs under a results folder as Markdown (no plots; the whole "
        "report with the family panels: python -m reports.build)."))
    parser.add_argument("--results", type=existing_dir, default="results/ablations",
                        help="Folder of the ablation runs (every run in it with an `ablation` label is read).")
    parser.add_argument("--n-boot", type=at_least(1, "a number of bootstrap resamples, at least 1"), default=2000,
                        help="Bootstrap resamples for the interval printed beside the verdict's t interval.")
    parser.add_argument("--clock", choices=CLOCK_CHOICES, default="auto",
                        help="Training clock: auto = CPU time for CPU-budgeted runs, else wall-clock.")
    args = parser.parse_args(argv)
    df = load_results(args.results)
    found = labelled_panels(df, run_table(df, Path(args.results)), args.clock)
    if not found:
        print(f"No runs under {args.results} carry an `ablation` label.")
    for panel, part in found:
        table = findings_table(part, panel, args.n_boot)
        body = markdown_table(table) if not table.empty else "_No variant ran beside its reference._"
        print(f"### {panel.reward} ({panel.world})\n\n{body}\n")


if __name__ == "__main__":
    main()
