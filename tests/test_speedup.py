"""Speedup tables, seed grouping, clocks and curves on synthetic curves with hand-computed crossing times."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bench.records import RunRecorder, load_results  # noqa: E402
from reports.build import build, draw_panel  # noqa: E402
from reports.groups import panels, run_table  # noqa: E402
from reports.speedup import mean_curve, speedup_markdown, speedup_table  # noqa: E402

CFG = "CFG 4.5 baseline (no training)"


def curve(x, y):
    return np.array(x, dtype=float), np.array(y, dtype=float)


# A: evaluated at different clocks per seed; B: slower. Both start at 0.30. Finals: A 0.50, B (0.42 + 0.40) / 2.
A = [curve([0, 100, 200], [0.30, 0.40, 0.50]), curve([0, 50, 150], [0.30, 0.36, 0.50])]
B = [curve([0, 400, 800], [0.30, 0.34, 0.42]), curve([0, 300, 900], [0.30, 0.35, 0.40])]


def table(a=A, b=B, levels=((CFG, 0.36),), **kw):
    return speedup_table(a, b, "nft", "flowgrpo", levels, n_boot=2000, seed=3, **kw).set_index("target")


def test_reached_by_both_interpolates_each_seed_and_divides_mean_times():
    row = table().loc["nft / flowgrpo start + 0.05"]  # target 0.35
    # A: 0 + 0.05 / 0.10 * 100 = 50 and 0 + 0.05 / 0.06 * 50 = 41.67; B: 400 + 0.01 / 0.08 * 400 = 450 and 300
    assert row["target_value"] == pytest.approx(0.35)
    assert row["time_a"] == pytest.approx((50 + 125 / 3) / 2) and row["time_b"] == pytest.approx(375.0)
    assert row["kind"] == "exact" and row["speedup"] == pytest.approx(375 / ((50 + 125 / 3) / 2))
    # 2 seeds a side: each extreme resample (A's slower seed twice, B's faster seed twice, and the reverse) has
    # probability 1/16 > 2.5 %, so the interval runs exactly from 300 / 50 to 450 / 41.67
    assert row["ci_low"] == pytest.approx(300 / 50) and row["ci_high"] == pytest.approx(450 / (125 / 3))
    assert row["ci_low"] <= row["speedup"] <= row["ci_high"]
    assert row["speedup_text"] == "8.2x [6.0x .. 11x]" and row["time_a_text"] == "46 s"
    assert row["seeds_text"] == "2 / 2"


def test_best_target_is_the_peak_of_the_mean_curve_of_a_declining_method():
    # B peaks and declines; A rises to its end (best = final: no "nft best" row). B's mean curve on the grid
    # 0/100/200/300: 0.40, 0.48, 0.465, 0.30 -> best 0.48. B seed 0 reaches it at 0.08 / 0.10 * 100 = 80 s, seed 1 at
    # 200 s (its evaluation there is exactly 0.48); A (two equal seeds) at 50 + 0.08 / 0.20 * 50 = 70 s.
    rising = curve([0, 50, 100], [0.30, 0.40, 0.60])
    peaked = [curve([0, 100, 200, 300], [0.40, 0.50, 0.45, 0.30]), curve([0, 100, 200, 300], [0.40, 0.46, 0.48, 0.30])]
    rows = table([rising, rising], peaked, levels=())
    assert "nft best" not in rows.index
    assert list(rows.index[:3]) == ["flowgrpo final", "nft final", "flowgrpo best"]  # finals, bests, then starts
    best = rows.loc["flowgrpo best"]
    assert best["target_value"] == pytest.approx(0.48)
    assert best["time_b"] == pytest.approx(140.0) and best["time_a"] == pytest.approx(70.0)
    assert best["kind"] == "exact" and best["speedup"] == pytest.approx(2.0)
    assert rows.loc["flowgrpo final", "time_b_text"] == "0 (at start)"  # its decayed final is below its start


def test_reached_by_one_only_is_a_bound():
    rows = table()
    b_final = rows.loc["flowgrpo final"]  # 0.41: A at 110 and 85.71; B seed 0 at 750, seed 1 never (censored: 900)
    assert b_final["target_value"] == pytest.approx(0.41)
    assert b_final["time_a"] == pytest.approx((110 + 50 + 500 / 14) / 2)
    assert b_final["time_b"] == pytest.approx(825.0) and b_final["reached_b"] == 1
    assert b_final["kind"] == "lower bound" and b_final["speedup"] == pytest.approx(825 / b_final["time_a"])
    assert b_final["ci_low"] == pytest.approx(750 / 110) and math.isinf(b_final["ci_high"])
    assert b_final["time_b_text"] == "> 14 min (1/2 seeds reached)"  # 825 s: minutes from 10 minutes on
    assert b_final["speedup_text"] == "> 8.4x [> 6.8x] (bound: flowgrpo censored)"
    a_final = rows.loc["nft final"]  # 0.50: A at 200 and 150, B never (censored at 800 and 900)
    assert a_final["speedup"] == pytest.approx(850 / 175) and a_final["time_b_text"] == "> 14 min (not reached)"
    # the other direction, one seed a side: A stops at 100 s below B's final, which B reaches at 200 s
    one = speedup_table([curve([0, 100], [0.3, 0.35])], [curve([0, 100, 200], [0.3, 0.34, 0.5])], "nft",
                        "flowgrpo", n_boot=100).set_index("target").loc["flowgrpo final"]
    assert one["kind"] == "upper bound" and one["speedup"] == pytest.approx(2.0)
    assert one["speedup_text"] == "< 2.0x (bound: nft censored; 1 seed: no CI)"
    assert one["time_a_text"] == "> 100 s (not reached)" and one["time_b_text"] == "200 s"


def test_reached_by_neither_and_cfg_level_as_target():
    rows = table(levels=((CFG, 0.36), ("CFG 7 baseline (no training)", 0.9)))
    cfg = rows.loc[CFG]  # A: 60 and 50 (exactly at its point); B: 400 + 0.02 / 0.08 * 400 = 500 and 420
    assert cfg["target_text"] == f"{CFG} = 0.360"
    assert cfg["time_a"] == pytest.approx(55) and cfg["time_b"] == pytest.approx(460)
    assert cfg["speedup"] == pytest.approx(460 / 55)
    never = rows.loc["CFG 7 baseline (no training)"]
    assert never["kind"] == "neither reached" and math.isnan(never["speedup"])
    assert never["speedup_text"] == "neither reached within 175 s (nft) / 14 min (flowgrpo)"
    assert list(rows.index[:3]) == ["flowgrpo final", "nft final", CFG]  # table order: finals, levels, starts


def test_target_met_at_start_prints_a_sentence_not_a_zero():
    high_b = [curve([0, 100], [0.40, 0.45]), curve([0, 80], [0.40, 0.41])]
    rows = table(b=high_b, levels=((CFG, 0.36), ("low", 0.2)))
    b_start = rows.loc[CFG]  # B starts at 0.40 >= 0.36
    assert b_start["kind"] == "B at start" and b_start["time_b_text"] == "0 (at start)"
    assert b_start["speedup_text"] == "flowgrpo starts above it"
    both = rows.loc["low"]
    assert both["speedup_text"] == "both start above it" and both["time_a_text"] == "0 (at start)"
    a_start = table(a=high_b, b=B).loc[CFG]
    assert a_start["speedup_text"] == "nft starts above it" and a_start["time_b_text"] == "460 s"
    for text in rows["speedup_text"]:
        assert text and not any(bad in text for bad in ("inf", "nan", "0 .. 0")) and text != "0"


def test_bootstrap_collapses_to_the_point_when_all_seeds_are_equal():
    same_a, same_b = [A[0], A[0], A[0]], [B[0], B[0]]
    row = table(a=same_a, b=same_b).loc["nft / flowgrpo start + 0.05"]  # A: 50 s, B: 450 s in every resample
    assert row["speedup"] == pytest.approx(9.0) and row["ci_low"] == pytest.approx(9.0)
    assert row["ci_high"] == pytest.approx(9.0) and row["speedup_text"] == "9.0x [9.0x .. 9.0x]"


def test_mean_curve_uses_a_common_grid_within_the_range_all_seeds_cover():
    grid, mean = mean_curve(A)  # seed 1 stops at 150: the grid is the union of x values in [0, 150]
    assert list(grid) == [0, 50, 100, 150]
    # seed 0 interpolated: 0.30, 0.35, 0.40, 0.45; seed 1: 0.30, 0.36, 0.43, 0.50
    assert mean == pytest.approx([0.30, 0.355, 0.415, 0.475])


def write_curve(root, run_id, method, seed, points, config=None, ablation=None, start_time=None, cpu=False):
    """One run: ``points`` = (clock seconds, strict accuracy or None) per epoch; the clock is logged as wall-clock
    and (``cpu=True``) as CPU time, which then runs twice as fast as the value given."""
    meta = {"method": method, "world": "toy", "reward": "geneval", "seed": seed, "provenance": {},
            "ablation": ablation, "config": {"method": method, "optim": {"lr": 1e-3}, "cfg": {"guidance": 4.5},
                                             **(config or {})}}
    if start_time is not None:
        meta["start_time"] = start_time
    with RunRecorder(root, run_id, meta) as recorder:
        for epoch, (clock, value) in enumerate(points):
            values = {"cum/wall_s": 2 * clock if cpu else clock, "cum/gpu_hours": clock / 3600}
            if cpu:
                values["cum/cpu_s"] = clock
            if value is not None:
                values["eval/strict_accuracy"] = value
                values.update({f"eval/strict_accuracy/{tag}": value for tag in ("colors", "position")})
            recorder.log(epoch, values)
            recorder.flush()


def comparison_store(root, cpu=False):
    """nft seeds 0, 1 (seed 0 twice: a shorter repeat), flowgrpo seeds 0, 1, a cfg run; all CPU-budgeted if cpu."""
    config = {"budget_cpu_s": 900.0} if cpu else {}
    for seed, (x, y) in enumerate(A):
        write_curve(root, f"nft-s{seed}", "nft", seed, list(zip(x, y)), config, start_time=10.0, cpu=cpu)
    write_curve(root, "nft-s0-repeat", "nft", 0, [(0, 0.30), (60, 0.9)], config, start_time=20.0, cpu=cpu)
    for seed, (x, y) in enumerate(B):
        write_curve(root, f"flowgrpo-s{seed}", "flowgrpo", seed, list(zip(x, y)), config, cpu=cpu)
    write_curve(root, "cfg-s0", "cfg", 0, [(0, 0.36)], config)


def test_repeats_count_once_and_are_reported(tmp_path):
    comparison_store(tmp_path / "results")
    text = build(tmp_path / "results", tmp_path / "out", n_boot=200).read_text()
    # the repeat ran 60 s against 200 s: dropped, so nft's 0.50 final stands and the repeat's 0.9 is nowhere
    assert "Repeat dropped: `nft-s0-repeat` (same setting and seed as `nft-s0`" in text
    assert "| nft (no CFG) final = 0.500 | 175 s | > 14 min (not reached) |" in text
    assert "| nft (no CFG) | geneval | 2 (1 repeat(s) dropped) |" in text
    assert "| nft-s0-repeat | nft | toy | geneval | 0 |" in text and "repeat of nft-s0" in text


def test_repeat_ties_keep_the_latest_start(tmp_path):
    write_curve(tmp_path, "early", "nft", 0, [(0, 0.3), (100, 0.4)], start_time=1.0)
    write_curve(tmp_path, "late", "nft", 0, [(0, 0.3), (100, 0.5)], start_time=2.0)
    (panel,) = panels(load_results(tmp_path), run_table(load_results(tmp_path), tmp_path))
    (group,) = panel.groups
    assert group.runs == ["late"] and group.repeats == {"early": "late"} and group.seeds == [0]


def test_runs_of_different_settings_are_separate_curves(tmp_path):
    write_curve(tmp_path, "lr3", "nft", 0, [(0, 0.3), (100, 0.4)])
    write_curve(tmp_path, "lr4", "nft", 1, [(0, 0.3), (100, 0.5)], config={"optim": {"lr": 1e-4}})
    write_curve(tmp_path, "lr4-long", "nft", 2, [(0, 0.3), (100, 0.5)], config={"optim": {"lr": 1e-4},
                                                                                  "budget_wall_s": 900.0})
    df = load_results(tmp_path)
    (panel,) = panels(df, run_table(df, tmp_path))
    groups = {g.label: g.runs for g in panel.groups}  # the budget is not a setting: lr4 and lr4-long pool
    assert groups == {"nft (no CFG) [optim.lr=0.001]": ["lr3"], "nft (no CFG) [optim.lr=0.0001]": ["lr4", "lr4-long"]}


def test_cpu_budgeted_runs_are_timed_on_cpu_seconds(tmp_path):
    comparison_store(tmp_path, cpu=True)
    text = speedup_markdown(tmp_path, n_boot=2000)
    assert "clock: training CPU time (evaluation excluded) (`cum/cpu_s`)" in text
    assert ("| target | time nft (no CFG) (CPU time) | time flowgrpo (CFG 4.5) (CPU time) | speedup [95 % CI] | "
            "seeds (nft (no CFG) / flowgrpo (CFG 4.5)) |") in text
    assert ("| nft (no CFG) / flowgrpo (CFG 4.5) start + 0.05 = 0.350 | 46 s | 375 s | 8.2x [6.0x .. 11x] | 2 / 2 |"
            in text)  # not 2x wall
    wall = speedup_markdown(tmp_path, n_boot=100, clock="wall")
    assert "| nft (no CFG) / flowgrpo (CFG 4.5) start + 0.05 = 0.350 | 92 s | 12 min |" in wall


def test_cfg_level_is_a_line_and_curves_have_monotone_x_on_a_common_grid(tmp_path):
    comparison_store(tmp_path)
    df = load_results(tmp_path)
    (panel,) = panels(df, run_table(df, tmp_path))
    assert [g.label for g in panel.baselines] == [CFG] and "cfg" not in [g.method for g in panel.trained]
    fig, ax = plt.subplots()
    draw_panel(ax, df, panel, panel.clock)
    lines = {line.get_label(): line for line in ax.get_lines()}
    level = lines[f"{CFG}: 0.360"]
    assert set(level.get_ydata()) == {0.36} and list(level.get_xdata()) == [0, 1]  # axhline: axes coordinates
    mean = lines["nft (no CFG) (mean of 2 seeds)"]  # x in minutes: flowgrpo runs to 900 s
    assert mean.get_xdata() == pytest.approx([0, 50 / 60, 100 / 60, 150 / 60])
    assert mean.get_ydata() == pytest.approx([0.3, 0.355, 0.415, 0.475])
    for line in ax.get_lines():
        assert np.all(np.diff(np.asarray(line.get_xdata(), dtype=float)) >= 0)
    assert ax.get_xlabel() == "training wall-clock (evaluation excluded) [min]"
    plt.close(fig)
    text = speedup_markdown(tmp_path, n_boot=100)
    assert f"| {CFG} = 0.360 | 55 s | 460 s | 8.4x [" in text


def test_headline_section_comes_first(tmp_path):
    comparison_store(tmp_path / "results" / "headline")
    write_curve(tmp_path / "results", "nft-top", "nft", 0, [(0, 0.3), (10, 0.31)])
    text = build(tmp_path / "results", tmp_path / "out", n_boot=100).read_text()
    headline, default = text.index("## Headline: NFT vs FlowGRPO"), text.index("## Default comparison")
    assert headline < default and text.index("| nft (no CFG) final = 0.500 | 175 s |") < default
    assert (tmp_path / "out" / "headline_toy_geneval.png").stat().st_size > 0
    final = text[text.index("### Final evaluation", headline):default]
    assert "| method / setting | reward | seeds | trained | strict accuracy | colors | position |" in final
    assert f"| {CFG} | geneval | 1 | no training | 0.360 | 0.360 | 0.360 |" in final  # no empty columns


def test_labels_say_each_method_s_evaluation_guidance(tmp_path):
    write_curve(tmp_path, "n", "nft", 0, [(0, 0.3), (100, 0.4)], config={"nft": {"eval_guidance": 1.0}})
    write_curve(tmp_path, "f", "flowgrpo-fast", 0, [(0, 0.4), (100, 0.4)],
                config={"flowgrpo": {"eval_guidance": 4.5}, "nft": {"eval_guidance": 1.0}})
    write_curve(tmp_path, "c", "cfg", 0, [(0, 0.41)])
    write_curve(tmp_path, "g", "grpo-guard", 0, [(0, 0.4), (100, 0.4)], config={"flowgrpo": {"eval_guidance": 3.0}})
    df = load_results(tmp_path)
    (panel,) = panels(df, run_table(df, tmp_path))
    assert sorted(g.label for g in panel.groups) == [
        "CFG 4.5 baseline (no training)", "flowgrpo-fast (CFG 4.5)", "grpo-guard (CFG 3)", "nft (no CFG)"]


def test_shapes_final_table_averages_the_held_out_tags(tmp_path):
    tags = {"single_object": 0.9, "two_object": 0.5, "counting": 0.3, "colors": 0.6, "position": 0.2,
            "color_attr": 0.4}
    meta = {"method": "cfg", "world": "shapes", "reward": "geneval", "seed": 0, "provenance": {},
            "config": {"method": "cfg", "cfg": {"guidance": 4.5}}}
    with RunRecorder(tmp_path, "cfg-shapes", meta) as recorder:
        recorder.log(0, {"cum/wall_s": 0.0, "eval/strict_accuracy": sum(tags.values()) / 6,
                         **{f"eval/strict_accuracy/{t}": v for t, v in tags.items()}})
    text = build(tmp_path, tmp_path / "out", n_boot=10).read_text()
    # (0.6 + 0.2 + 0.4) / 3 = 0.4: colors, position and color_attr are the held-out tags
    assert "held-out tags (strict, mean of 3)" in text and "| 0.400 |" in text.split("held-out tags (strict")[1]
    assert "never do" in text


def test_a_run_from_before_an_option_existed_pools_with_today_s_runs(tmp_path):
    # seed 0 was written before `flowgrpo.noise_level` existed (its config lacks the key); seed 1 holds today's
    # default. They are one setting and pool; a run with a non-default value stays apart.
    from bench.config import RunConfig

    default = RunConfig().flowgrpo.noise_level
    write_curve(tmp_path, "old", "flowgrpo", 0, [(0, 0.4), (100, 0.41)])
    write_curve(tmp_path, "new", "flowgrpo", 1, [(0, 0.4), (100, 0.42)], config={"flowgrpo": {"noise_level": default}})
    write_curve(tmp_path, "other", "flowgrpo", 2, [(0, 0.4), (100, 0.43)],
                config={"flowgrpo": {"noise_level": default + 0.1}})
    df = load_results(tmp_path)
    (panel,) = panels(df, run_table(df, tmp_path))
    assert sorted(g.runs for g in panel.groups) == [["new", "old"], ["other"]] or \
        sorted(sorted(g.runs) for g in panel.groups) == [["new", "old"], ["other"]]


def test_headline_gives_the_other_methods_speedups_against_both(tmp_path):
    comparison_store(tmp_path / "results" / "headline")
    write_curve(tmp_path / "results" / "headline", "awm-s0", "awm", 0, [(0, 0.30), (100, 0.50)])
    text = build(tmp_path / "results", tmp_path / "out", n_boot=100).read_text()
    head = text[text.index("## Headline: NFT vs FlowGRPO; awm against both"):text.index("## Default comparison")]
    claims = head[head.index("### Claimed vs measured speedup"):head.index("### Curves")]
    # flowgrpo's mean curve rises to its end, so its best is its final: the mean of the seeds' last evaluations
    # (0.42 + 0.40) / 2 = 0.41, which awm's straight line from 0.30 to 0.50 in 100 s crosses at 55 s
    assert "| awm (no CFG) | flowgrpo (CFG 4.5) | toy (geneval) | flowgrpo (CFG 4.5) final = 0.410 | 55 s |" in claims
    # against nft: nft's final 0.50 (both seeds end there), awm at 100 s, nft at (200 + 150) / 2 = 175 s: 1.75x
    assert "| awm (no CFG) | nft (no CFG) | toy (geneval) | nft (no CFG) final = 0.500 | 100 s | 175 s | 1.8x" in claims
    assert "| awm | flowgrpo | any task | 24x" in claims  # the paper's claim under the measured rows
    speedups = head[head.index("### Speedup"):head.index("### Claimed vs measured speedup")]
    order = [line.split(" -- ")[0] for line in speedups.splitlines() if line.startswith("**geneval (toy)")]
    assert order == ["**geneval (toy): nft (no CFG) vs flowgrpo (CFG 4.5)**", "**geneval (toy): awm (no CFG) vs nft "
                     "(no CFG)**", "**geneval (toy): awm (no CFG) vs flowgrpo (CFG 4.5)**"]  # the full tables too
    assert "| nft (no CFG) final = 0.500 | 100 s | 175 s | 1.8x" in speedups.split("awm (no CFG) vs nft")[1]


def test_start_targets_appear_once_when_both_methods_start_at_one_score():
    shared = table(levels=())  # A and B both start at 0.30
    assert [t for t in shared.index if "start +" in t] == [f"nft / flowgrpo start + {d}" for d in ("0.02", "0.05",
                                                                                                   "0.10")]
    apart = table(b=[curve([0, 400], [0.40, 0.50]), curve([0, 400], [0.40, 0.52])], levels=())  # B from 0.40
    starts = [(t, round(v, 6)) for t, v in apart["target_value"].items() if "start +" in t]
    assert starts == [("nft start + 0.02", 0.32), ("nft start + 0.05", 0.35), ("nft start + 0.10", 0.4),
                      ("flowgrpo start + 0.02", 0.42), ("flowgrpo start + 0.05", 0.45), ("flowgrpo start + 0.10", 0.5)]


def test_a_panel_whose_runs_differ_in_length_gets_an_axis_up_to_the_shorter_one(tmp_path):
    from PIL import Image

    from reports.build import panel_curves, plot_panel, shortest_end

    write_curve(tmp_path, "short", "nft", 0, [(0, 0.30), (50, 0.40), (100, 0.45)])
    write_curve(tmp_path, "long", "flowgrpo", 0, [(0, 0.40), (500, 0.42), (1000, 0.20)])
    df = load_results(tmp_path)
    (panel,) = panels(df, run_table(df, tmp_path))
    assert shortest_end(panel_curves(df, panel, panel.clock)) == (100.0, 1000.0)
    one = Image.open(plot_panel(df, panel, tmp_path / "one.png", "t")).size
    two = Image.open(plot_panel(df, panel, tmp_path / "two.png", "t", zoom=True)).size
    assert two[0] > 1.6 * one[0] and abs(two[1] - one[1]) < 0.1 * one[1]  # a second axis beside the first
    near = tmp_path / "near"  # 100 s against 150 s: less than twice as long, no second axis
    write_curve(near, "short", "nft", 0, [(0, 0.30), (50, 0.40), (100, 0.45)])
    write_curve(near, "mid", "flowgrpo", 0, [(0, 0.40), (75, 0.42), (150, 0.44)])
    df = load_results(near)
    (panel,) = panels(df, run_table(df, near))
    assert shortest_end(panel_curves(df, panel, panel.clock)) == (100.0, 150.0)
    assert Image.open(plot_panel(df, panel, tmp_path / "three.png", "t", zoom=True)).size[0] < 1.2 * one[0]
