"""The ablation report: hand-computed effects and intervals, each verdict (yes / no / inconclusive / no claim), one
panel per family."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench.records import load_results
from reports.ablations import (
    FINDINGS, effect, family_panels, findings_table, main, pooled_seed_sd, t_interval, verdict,
)
from reports.build import build
from reports.groups import panels, run_table
from tests.test_speedup import write_curve

# (label, finals of seeds 0 and 1); every run starts at 0.30 and is evaluated at 0, 450 and 900 s.
# Pooled seed spread by hand: six pairs 0.02 apart (squares 2 x 0.01^2 = 0.0002 each) and one 0.12 apart
# (2 x 0.06^2 = 0.0072): s^2 = 0.0084 / 7 = 0.0012, s = 0.034641; t(0.975, 7) = 2.364624 (tables: 2.365), so a
# 2-vs-2 interval is the difference +- 2.364624 x 0.034641 x sqrt(1/2 + 1/2) = +- 0.081913.
RUNS = [("nft preset", (0.40, 0.42)), ("nft sampler: SDE", (0.30, 0.32)),
        ("nft negative branch: removed", (0.55, 0.57)), ("nft decay: constant 0.9", (0.35, 0.47)),
        ("nft cfg: CFG 4.5 at rollout", (0.50, 0.52)), ("nft timesteps: 3 of 10", (0.41, 0.43)),
        ("nft beta: 0.1", (0.36, 0.38))]
HALF = 0.081913


def store(root):
    for label, finals in RUNS:
        for seed, final in enumerate(finals):
            write_curve(root, f"{label.replace(' ', '_').replace(':', '')}_s{seed}", "nft", seed,
                        [(0, 0.30), (450, (0.30 + final) / 2), (900, final)], ablation=label)


def table(tmp_path):
    store(tmp_path)
    df = load_results(tmp_path)
    (panel,) = panels(df, run_table(df, tmp_path))
    return findings_table(df, panel, n_boot=4000).set_index("ablation"), panel


def test_effect_is_the_difference_of_seed_means_with_a_bootstrap_interval():
    point, low, high = effect(np.array([0.30, 0.32]), np.array([0.40, 0.42]), n_boot=4000)
    # resampled means lie in {0.30, 0.31, 0.32} and {0.40, 0.41, 0.42}: every difference is in [-0.12, -0.08]
    assert point == pytest.approx(-0.10) and -0.12 - 1e-12 <= low <= high <= -0.08 + 1e-12
    one = effect(np.array([0.3]), np.array([0.4, 0.5]))
    assert one[0] == pytest.approx(-0.15) and math.isnan(one[1]) and math.isnan(one[2])


def test_pooled_seed_sd_and_t_interval_by_hand():
    sd, dof = pooled_seed_sd([np.array(f) for _, f in RUNS] + [np.array([0.9])])  # a 1-seed group adds nothing
    assert dof == 7 and sd == pytest.approx(0.034641, abs=1e-6)
    point, low, high = t_interval(np.array([0.30, 0.32]), np.array([0.40, 0.42]), sd, dof)
    assert point == pytest.approx(-0.10) and (low, high) == pytest.approx((-0.10 - HALF, -0.10 + HALF), abs=1e-6)
    # one seed against two: sqrt(1 + 1/2) times wider
    _, low, high = t_interval(np.array([0.3]), np.array([0.40, 0.42]), sd, dof)
    assert high - low == pytest.approx(2 * HALF * math.sqrt(1.5), abs=1e-6)
    sd1, dof1 = pooled_seed_sd([np.array([0.3]), np.array([0.4])])  # no group with 2 seeds: no spread measured
    assert math.isnan(sd1) and dof1 == 0
    assert math.isnan(t_interval(np.array([0.3]), np.array([0.4]), math.nan, 0)[1])


def test_verdicts():
    assert verdict(-1, -0.12, -0.08) == "yes" and verdict(+1, 0.02, 0.05) == "yes"
    assert verdict(-1, 0.02, 0.05) == "no" and verdict(+1, -0.12, -0.08) == "no"
    assert verdict(-1, -0.07, 0.07) == "inconclusive at this budget"
    assert verdict(None, -0.12, -0.08) == "no claim"
    assert verdict(-1, math.nan, math.nan) == "inconclusive at this budget (seed spread not measured)"


def test_findings_table_on_runs_with_known_finals(tmp_path):
    rows, _ = table(tmp_path)
    sde = rows.loc["nft sampler: SDE"]  # paper: SDE worse; measured -0.100 +- 0.082, below 0
    assert sde["vs"] == "nft preset"
    assert sde["measured effect (final, variant - reference)"] == "-0.100 [-0.182 .. -0.018]"
    assert sde["reproduced"] == "yes" and sde["seeds"] == "2 / 2" and sde["pooled seed sd (dof)"] == "0.035 (7)"
    assert sde["each seed's final (variant / reference)"] == "0.300, 0.320 / 0.400, 0.420"
    assert sde["bootstrap interval"] == "[-0.120 .. -0.080]"  # resampled means differ by -0.12 .. -0.08
    assert rows.loc["nft negative branch: removed", "reproduced"] == "no"  # paper: collapses; +0.150 +- 0.082
    # -0.040: the bootstrap over its own 2 seeds a side lies below 0, the pooled interval does not
    beta = rows.loc["nft beta: 0.1"]
    assert beta["bootstrap interval"] == "[-0.060 .. -0.020]" and beta["reproduced"] == "inconclusive at this budget"
    assert beta["measured effect (final, variant - reference)"] == "-0.040 [-0.122 .. +0.042]"
    assert rows.loc["nft decay: constant 0.9", "reproduced"] == "inconclusive at this budget"
    assert rows.loc["nft cfg: CFG 4.5 at rollout", "reproduced"] == "no claim"
    extra = rows.loc["nft timesteps: 3 of 10"]  # a labelled variant without a finding: compared, no claim
    assert extra["vs"] == "nft preset" and extra["measured effect (final, variant - reference)"].startswith("+0.010")
    assert extra["reproduced"] == "no claim"
    assert "nft sampler: 1st-order ODE" not in rows.index  # not run: no row


def test_one_panel_per_family_with_its_reference(tmp_path):
    _, panel = table(tmp_path)
    families = family_panels(panel)
    assert sorted(families) == ["nft beta", "nft cfg", "nft decay", "nft negative branch", "nft sampler",
                                "nft timesteps"]
    assert sorted(g.ablation for g in families["nft sampler"].groups) == ["nft preset", "nft sampler: SDE"]
    assert all(len(g.runs) == 2 for p in families.values() for g in p.groups)


def test_report_has_the_table_and_a_figure_per_family(tmp_path):
    store(tmp_path / "results" / "ablations")  # the ablations folder of the results root
    text = build(tmp_path / "results", tmp_path / "out", n_boot=200).read_text()
    section = text.split("## Ablations")[1]
    assert "the papers' ablations" in section and "| nft sampler: SDE | nft preset |" in section
    assert "| nft decay: constant 0.9 | nft preset | a constant 0.9 barely learns | +0.000 [" in section
    for family in ("nft-sampler", "nft-decay", "nft-negative-branch", "nft-cfg", "nft-timesteps"):
        assert (tmp_path / "out" / f"ablation_toy_geneval_{family}.png").exists()
    assert {f.family for f in FINDINGS} >= {"nft sampler", "nft decay", "nft negative branch", "nft weighting",
                                           "nft beta", "nft cfg", "flowgrpo kl", "flowgrpo noise"}


def test_cli_prints_the_findings_table(tmp_path, capsys):
    store(tmp_path / "abl")
    main(["--results", str(tmp_path / "abl"), "--n-boot", "200"])
    out = capsys.readouterr().out
    assert out.startswith("### geneval (toy)") and "| nft sampler: SDE | nft preset |" in out
    assert "| -0.100 [-0.182 .. -0.018] | 2 / 2 | 0.300, 0.320 / 0.400, 0.420 | 0.035 (7) |" in out
    (tmp_path / "empty").mkdir()
    main(["--results", str(tmp_path / "empty")])
    assert "carry an `ablation` label" in capsys.readouterr().out
