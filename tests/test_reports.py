"""Speedups on synthetic curves with hand-computed crossings, published CSVs, and the report build."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench.records import RunRecorder, load_results
from reports.build import build, load_published
from reports.markdown import count
from reports.speedup import isotonic, speedup_markdown, speedup_table, time_to_reach

TAGS = ("single_object", "position")


def test_count_is_singular_only_for_one():
    assert [count(n, "run") for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]


def test_time_to_reach_interpolates_between_points():
    x, y = [0, 1, 2, 3], [0.0, 0.2, 0.6, 0.7]
    assert time_to_reach(x, y, 0.5) == pytest.approx(1.75)  # 1 + (0.5 - 0.2) / (0.6 - 0.2)
    assert time_to_reach(x, y, 0.7) == pytest.approx(3.0)
    assert time_to_reach(x, y, -1.0) == 0.0  # already there at the first point
    assert math.isnan(time_to_reach(x, y, 0.8))  # never
    shuffled_with_nan = ([3, np.nan, 1, 0, 2], [0.7, 0.9, 0.2, 0.0, 0.6])  # sorted by x, the NaN point dropped
    assert time_to_reach(*shuffled_with_nan, 0.5) == pytest.approx(1.75)


def test_monotone_option_ignores_a_lucky_early_point():
    x, y = [0, 1, 2, 3], [0.0, 0.6, 0.2, 0.8]
    assert list(isotonic(y)) == pytest.approx([0.0, 0.4, 0.4, 0.8])
    assert time_to_reach(x, y, 0.5) == pytest.approx(5 / 6)  # raw: 0 + 0.5 / 0.6
    assert time_to_reach(x, y, 0.5, monotone=True) == pytest.approx(2.25)  # 2 + (0.5 - 0.4) / (0.8 - 0.4)


def write_run(root, method, seed, epochs, gpu_hours_per_epoch, slope, offset, ablation=None, evals=True):
    """A linear reward curve ``slope * epoch + offset`` with cumulative GPU-hours and wall-clock."""
    meta = {"method": method, "world": "toy", "reward": "geneval", "seed": seed, "provenance": {}, "ablation": ablation}
    with RunRecorder(root, f"{method}-s{seed}", meta) as recorder:
        for epoch in range(epochs):
            hours = gpu_hours_per_epoch * epoch
            recorder.log(epoch, {"reward/avg_mean": slope * epoch + offset, "cum/gpu_hours": hours,
                                 "cum/wall_s": 3600 * hours, "time/rollout_s": 1.0})
            if evals and epoch in (0, epochs - 1):
                recorder.log(epoch, {f"eval/strict_accuracy/{tag}": 0.5 + 0.04 * epoch for tag in TAGS})
            recorder.flush()


def synthetic_store(root, evals=True, methods=("nft", "flowgrpo")):
    """NFT: 1 GPU-h/epoch, reward 0.1*epoch +/- 0.02. FlowGRPO: 2 GPU-h/epoch, reward 0.045*epoch +/- 0.01."""
    for seed, sign in ((0, -1), (1, 1)):
        if "nft" in methods:
            write_run(root, "nft", seed, 11, 1.0, 0.1, 0.02 * sign, evals=evals)
        if "flowgrpo" in methods:
            write_run(root, "flowgrpo", seed, 11, 2.0, 0.045, 0.01 * sign, evals=evals)


def test_speedup_matches_hand_computed_crossings(tmp_path):
    synthetic_store(tmp_path)
    text = speedup_markdown(load_results(tmp_path), clock="gpu_hours", n_boot=2000, seed=1)
    assert "clock: device time: training wall-clock x devices (evaluation excluded) (`cum/gpu_hours`)" in text
    # FlowGRPO ends at 0.44 / 0.46 (mean 0.45). NFT seeds (0.1 * epoch -/+ 0.02, 1 GPU-h per epoch) reach 0.45 at
    # 4.7 and 4.3 GPU-h (mean 4.5 h); FlowGRPO seed 1 (0.045 * epoch + 0.01, 2 GPU-h per epoch) at 19.56 GPU-h,
    # seed 0 never (censored at its last evaluation, 20 GPU-h): speedup > 19.78 / 4.5 = 4.4; the interval's end is
    # the slowest-A / fastest-B resample, 19.56 / 4.7 = 4.2 (probability 1/16 > 2.5 %).
    assert "| flowgrpo final = 0.450 | 4.5 h | > 20 h (1/2 seeds reached) | > 4.4x [> 4.2x] (bound: flowgrpo " \
           "censored) | 2 / 2 |" in text
    # NFT ends at 0.98 / 1.02 (mean 1.0) after 10 GPU-h: seed 1 reaches 1.0 at 9.8 h, seed 0 never (censored at
    # 10 h); FlowGRPO never gets there (both seeds censored at 20 h): no bound either way
    assert "| nft final = 1.000 | > 9.9 h (1/2 seeds reached) | > 20 h (not reached) | no bound: censored on both " \
           "sides (nft 1/2, flowgrpo 0/2 seeds reached) | 2 / 2 |" in text
    # a start target that one NFT seed meets at its first evaluation: resamples of that seed alone divide by 0
    assert "| nft / flowgrpo start + 0.02 = 0.020 | 12 min | 53 min | 4.4x [1.1x .. unbounded] | 2 / 2 |" in text


def test_named_methods_keep_their_roles_whatever_their_order(tmp_path):
    synthetic_store(tmp_path)
    text = speedup_markdown(load_results(tmp_path), a="flowgrpo", b="nft", clock="gpu_hours", n_boot=200)
    assert text.startswith("**geneval (toy): flowgrpo vs nft**")
    # FlowGRPO's start + 0.02 target as above: FlowGRPO 53 min, NFT 12 min; with the roles swapped the speedup
    # (time B / time A) is 12 / 53 = 0.23 rather than 4.4
    assert "| flowgrpo / nft start + 0.02 = 0.020 | 53 min | 12 min | 0.23x" in text


def test_speedup_needs_two_methods_and_curves(tmp_path):
    synthetic_store(tmp_path, methods=("nft",))
    assert speedup_markdown(load_results(tmp_path), n_boot=10).startswith("_No pair of `nft` and `flowgrpo` runs")
    with pytest.raises(ValueError, match="flowgrpo"):
        speedup_table([(np.array([0.0, 1.0]), np.array([0.1, 0.2]))], [], "nft", "flowgrpo")


def test_published_csvs_are_labelled_data():
    published = load_published()
    assert set(published["confidence"]) <= {"exact", "transcribed", "read-off-plot", "third party"}
    assert published["source"].notna().all() and published["metric"].notna().all()
    files = set(published["file"])
    assert {"diffusionnft_table1.csv", "diffusionnft_single_reward.csv", "head_to_head_efficiency.csv",
            "flowgrpo_table2.csv", "flowgrpo_geneval_tasks.csv", "awm.csv", "dgpo.csv"} <= files
    dgpo = published[(published["file"] == "dgpo.csv") & (published["metric"] == "geneval")]
    assert dict(zip(dgpo["model"], dgpo["value"])) == {"SD3.5-M": 0.63, "Flow-GRPO": 0.95, "DGPO": 0.97}
    single = published[(published["model"] == "DiffusionNFT (GenEval)") & (published["metric"] == "geneval")]
    assert single["value"].tolist() == [0.98]


def test_build_writes_plots_and_keeps_measured_and_published_tables_apart(tmp_path):
    synthetic_store(tmp_path / "results")
    write_run(tmp_path / "results", "nft", 2, 11, 1.0, 0.05, 0.0, ablation="half-lr")  # must not join the nft seeds
    report = build(tmp_path / "results", tmp_path / "out", n_boot=50)
    text = report.read_text()
    for png in ("default_toy_geneval.png", "ablation_toy_geneval.png"):
        assert (tmp_path / "out" / png).stat().st_size > 0 and f"({png})" in text
    assert "World `toy` (measured)" in text
    assert "published: FlowGRPO (arXiv 2505.05470 v5) GenEval per task, exact" in text
    assert "published: DiffusionNFT (arXiv 2509.16117) Fig. 1a / Fig. 6, read-off-plot" in text
    assert "| flowgrpo final = 0.450 | 4.5 h | > 20 h (1/2 seeds reached) | > 4.4x" in text  # ablation run left out
    assert "Runs with an `ablation` label (1 run) appear only under Ablations" in text
    assert f"from `{tmp_path / 'results'}` (5 runs) and" in text  # 2 + 2 seeds and the ablation run; no other folder
    for table in text.split("\n\n"):  # no table holds both a measured (toy) row and a published one
        assert not ("| nft |" in table and "published:" in table)


def test_build_copes_with_one_method_and_no_evals(tmp_path):
    synthetic_store(tmp_path / "results", evals=False, methods=("flowgrpo",))
    text = build(tmp_path / "results", tmp_path / "out", n_boot=10).read_text()
    assert "no speedup" in text and "| flowgrpo | geneval | 2 |" in text
    assert "published: FlowGRPO (arXiv 2505.05470 v5) Table 2, exact" in text
    empty = build(tmp_path / "nothing", tmp_path / "out2", n_boot=10).read_text()
    assert "No measured runs found" in empty


def test_tuning_table_reads_values_at_wall_clock_checkpoints(tmp_path):
    from reports.tuning import tuning_table

    meta = {"method": "nft", "world": "toy", "reward": "geneval", "seed": 0, "provenance": {}, "ablation": "tuning:x"}
    with RunRecorder(tmp_path, "run-a", meta) as recorder:  # evaluations at 0, 295, 610 s; the run stops at 610 s
        for epoch, wall, acc in ((0, 0.0, 0.30), (1, 150.0, None), (2, 295.0, 0.34), (3, 610.0, 0.41)):
            values = {"cum/wall_s": wall}  # logged every row, the initial evaluation's row 0 included
            if epoch:  # training rows carry the rollout reward: 0.2, 0.4, 0.6
                values["reward/avg_mean"] = 0.2 * epoch
            if acc is not None:
                values["eval/strict_accuracy"] = acc
            recorder.log(epoch, values)
            recorder.flush()
    table = tuning_table(load_results(tmp_path), ["run-a", "missing"]).set_index("run")
    row = table.loc["run-a"]
    assert list(table.index) == ["run-a"] and row["label"] == "tuning:x"
    assert row["start"] == 0.30 and row["~300 s"] == 0.34  # 295 s is within the 2 % slack of 300 s
    assert row["~600 s"] == 0.41 and math.isnan(row["~900 s"])  # never reached: blank, not carried over
    assert row["peak"] == 0.41 and row["final - start"] == pytest.approx(0.11) and row["final clock (s)"] == 610.0
    assert row["clock"] == "wall-clock"  # no CPU budget in its config
    assert row["epochs"] == 3  # rows 1..3 carry a rollout reward; row 0 is the initial evaluation
    # 3 training rows: the first and last 20 % are one epoch each
    assert row["train reward, first 20 %"] == pytest.approx(0.2) and row["last 20 %"] == pytest.approx(0.6)


def test_tuning_cli_reads_at_the_given_checkpoints(tmp_path, capsys):
    from reports.tuning import main

    meta = {"method": "nft", "world": "toy", "reward": "geneval", "seed": 0, "provenance": {}}
    with RunRecorder(tmp_path, "run-a", meta) as recorder:  # evaluations at 0, 1000 and 2000 s
        for epoch, wall, acc in ((0, 0.0, 0.30), (1, 1000.0, 0.35), (2, 2000.0, 0.45)):
            recorder.log(epoch, {"cum/wall_s": wall, "eval/strict_accuracy": acc})
            recorder.flush()
    main(["--results", str(tmp_path), "--at", "1000,1990,5000"])
    header, _, row = capsys.readouterr().out.strip().splitlines()[:3]
    assert "| ~1000 s | ~1990 s | ~5000 s |" in header and "label" not in header  # no ablation label: no column
    assert "| 0.35 | 0.45 |  |" in row  # 1990 s reads the 2000 s evaluation (2 % slack); 5000 s: never reached
    with pytest.raises(SystemExit) as stop:
        main(["--results", str(tmp_path), "--at", "0,x"])
    assert stop.value.code == 2 and "--at '0,x': give positive seconds" in capsys.readouterr().err


def test_tuning_by_label_averages_each_labels_seeds(tmp_path, capsys):
    import pandas as pd

    from reports.tuning import label_means, main

    # two seeds of label "a" (the second stops before 600 s), one of label "b", one unlabelled run
    for run, label, evals in (("a0", "a", ((0, 0.30), (300, 0.40), (600, 0.50))), ("a1", "a", ((0, 0.30), (300, 0.36))),
                              ("b0", "b", ((0, 0.30), (300, 0.20), (600, 0.10))), ("x", None, ((0, 0.5), (300, 0.6)))):
        meta = {"method": "nft", "world": "toy", "reward": "geneval", "seed": 0, "provenance": {}}
        with RunRecorder(tmp_path, run, {**meta, **({"ablation": label} if label else {})}) as recorder:
            for epoch, (wall, acc) in enumerate(evals):
                recorder.log(epoch, {"cum/wall_s": float(wall), "eval/strict_accuracy": acc,
                                     **({"reward/avg_mean": 0.5} if epoch else {})})
                recorder.flush()
    main(["--results", str(tmp_path), "--at", "300,600", "--by-label"])
    header, _, *body = [[c.strip() for c in line.strip("|").split("|")]
                        for line in capsys.readouterr().out.strip().splitlines()]
    rows = {cells[0]: dict(zip(header, cells)) for cells in body}
    assert header[:3] == ["label", "runs", "clock"] and list(rows) == ["a", "b", "x"]
    assert rows["a"]["runs"] == "2" and float(rows["a"]["~300 s"]) == pytest.approx(0.38)  # (0.40 + 0.36) / 2
    assert rows["a"]["~600 s"] == ""  # a1 never reached 600 s: blank, not a1-less 0.50
    assert float(rows["a"]["final"]) == pytest.approx(0.43) and float(rows["a"]["epochs"]) == pytest.approx(1.5)
    assert rows["b"]["runs"] == "1" and float(rows["b"]["final - start"]) == pytest.approx(-0.2)
    assert rows["x"]["runs"] == "1" and float(rows["x"]["~300 s"]) == pytest.approx(0.6)  # unlabelled: its own row
    assert label_means(pd.DataFrame()).empty  # no run evaluated: an empty table, not a KeyError


def test_build_names_every_folder_it_reads_with_its_run_count(tmp_path):
    synthetic_store(tmp_path / "results" / "headline")  # 4 runs
    write_run(tmp_path / "results", "nft", 0, 3, 1.0, 0.1, 0.0)  # 1 run in the default comparison
    write_run(tmp_path / "results" / "ablations", "nft", 0, 3, 1.0, 0.1, 0.0, ablation="nft preset")
    text = build(tmp_path / "results", tmp_path / "out", n_boot=10).read_text()
    root = tmp_path / "results"
    assert (f"from `{root / 'headline'}` (4 runs), `{root}` (1 run), `{root / 'ablations'}` (1 run) and"
            in text)
