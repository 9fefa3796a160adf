"""The results store: schema round trip, crash safety, resume without duplicates, run ids, provenance."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from bench.records import (
    COLUMNS,
    EpochAlreadyFlushedError,
    RunRecorder,
    load_results,
    make_run_id,
    wide,
)
from bench.provenance import collect_provenance

REPO = Path(__file__).resolve().parents[1]
META = {"method": "nft", "world": "toy", "reward": "geneval", "seed": 3, "provenance": {"test": True}}


def test_round_trip_keeps_the_schema_and_values(tmp_path):
    with RunRecorder(tmp_path, "run-a", {**META, "config": {"lr": 1e-4, "path": tmp_path}}) as recorder:
        recorder.log(0, {"eval/strict_accuracy/position": 0.25, "cum/gpu_hours": 0}, timestamp=100.0)
        recorder.flush()
        recorder.log(1, {"loss": 2}, prefix="train/", timestamp=101.0)
    df = load_results(tmp_path)
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert df["seed"].dtype == "int64" and df["epoch"].dtype == "int64" and df["value"].dtype == "float64"
    assert sorted(df["key"]) == ["cum/gpu_hours", "eval/strict_accuracy/position", "train/loss"]
    row = df[df["key"] == "train/loss"].iloc[0]
    run = (row["run_id"], row["method"], row["world"], row["reward"], row["seed"])
    assert run == ("run-a", "nft", "toy", "geneval", 3)
    assert (row["epoch"], row["value"], row["time"]) == (1, 2.0, 101.0)
    assert len(list((tmp_path / "run-a" / "records").glob("part-*.parquet"))) == 2
    meta = json.loads((tmp_path / "run-a" / "meta.json").read_text())
    assert meta["run_id"] == "run-a" and meta["config"]["lr"] == 1e-4 and "start_time" in meta

    table = wide(df)
    assert list(table["epoch"]) == [0, 1]
    assert table.loc[0, "eval/strict_accuracy/position"] == 0.25 and pd.isna(table.loc[0, "train/loss"])


def test_load_results_reads_many_runs_and_joins_the_ablation_label(tmp_path):
    for seed in (0, 1):
        meta = {**META, "seed": seed, "ablation": "no-kl" if seed else None}
        with RunRecorder(tmp_path, f"run-{seed}", meta) as recorder:
            recorder.log(0, {"reward/avg_mean": seed})
    df = load_results(tmp_path)
    labels = df.drop_duplicates("run_id").set_index("run_id")["ablation"]
    assert pd.isna(labels["run-0"]) and labels["run-1"] == "no-kl"
    assert len(wide(df)) == 2
    assert load_results(tmp_path / "empty").empty


def test_resume_refuses_flushed_epochs_and_other_runs(tmp_path):
    with RunRecorder(tmp_path, "run-r", META) as recorder:
        assert recorder.last_epoch() == -1
        for epoch in range(3):
            recorder.log(epoch, {"reward/avg_mean": epoch})
            recorder.flush()
    resumed = RunRecorder(tmp_path, "run-r", {**META, "config": {"changed": True}})
    assert resumed.last_epoch() == 2
    with pytest.raises(EpochAlreadyFlushedError, match="start at epoch 3"):
        resumed.log(2, {"reward/avg_mean": 9.0})
    resumed.log(3, {"reward/avg_mean": 3.0})
    with pytest.raises(ValueError, match="already logged"):
        resumed.log(3, {"reward/avg_mean": 3.0})
    resumed.flush()
    assert sorted(load_results(tmp_path)["epoch"]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="seed"):
        RunRecorder(tmp_path, "run-r", {**META, "seed": 4})
    with pytest.raises(ValueError, match="method"):
        RunRecorder(tmp_path, "run-x", {**META, "method": "NFT"})


def test_an_exception_discards_the_unfinished_epoch(tmp_path):
    with pytest.raises(RuntimeError):
        with RunRecorder(tmp_path, "run-e", META) as recorder:
            recorder.log(0, {"reward/avg_mean": 1.0})
            recorder.flush()
            recorder.log(1, {"reward/avg_mean": 2.0})
            raise RuntimeError("trainer died mid-epoch")
    assert RunRecorder(tmp_path, "run-e", META).last_epoch() == 0


# Flushes epochs 0-2, then blocks inside the write of epoch 3 after some bytes hit the temp file.
CRASHING_WRITER = """
import sys, time
import bench.records as records
meta = {"method": "nft", "world": "toy", "reward": "geneval", "seed": 0, "provenance": {}}
recorder = records.RunRecorder(sys.argv[1], "run-k", meta)
for epoch in range(3):
    recorder.log(epoch, {"reward/avg_mean": 0.1 * epoch, "cum/gpu_hours": epoch})
    recorder.flush()

def slow_write(table, handle):
    handle.write(b"PAR1 half a parquet file")
    handle.flush()
    print("writing", flush=True)
    time.sleep(60)

records.pq.write_table = slow_write
recorder.log(3, {"reward/avg_mean": 0.3})
recorder.flush()
"""


def test_sigkill_during_a_write_leaves_earlier_epochs_readable(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CRASHING_WRITER), str(tmp_path)],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    records_dir = tmp_path / "run-k" / "records"
    assert len(list(records_dir.glob(".part-000003.parquet.tmp-*"))) == 1  # the torn write stayed hidden
    parts = sorted(records_dir.glob("part-*.parquet"))
    assert [p.name for p in parts] == [f"part-00000{i}.parquet" for i in range(3)]
    for part in parts:
        pq.read_table(part)  # every visible part is complete
    df = load_results(tmp_path)
    assert sorted(df["epoch"].unique()) == [0, 1, 2]

    resumed = RunRecorder(tmp_path, "run-k", {**META, "seed": 0})
    assert resumed.last_epoch() == 2
    assert not list(records_dir.glob(".part-*"))  # stale temp file cleaned up
    resumed.log(3, {"reward/avg_mean": 0.3})
    assert resumed.flush().name == "part-000003.parquet"


def test_run_ids_are_unique_or_deterministic_and_path_safe():
    first, second = (make_run_id("nft", "pickscore:0.5,hpsv2:0.5", 1) for _ in range(2))
    assert first != second and first.startswith("nft_pickscore-0.5-hpsv2-0.5_s1_")
    assert make_run_id("flowgrpo-fast", "ocr", 2, stamp="123_4") == "flowgrpo-fast_ocr_s2_123-4"
    with pytest.raises(ValueError, match="run_id"):
        RunRecorder("/tmp", "../escape", META)


def test_provenance_has_versions_and_host():
    provenance = collect_provenance()
    expected = {"git_commit", "git_dirty", "python", "packages", "hostname", "cpu_count", "platform", "gpus"}
    assert expected <= set(provenance)
    assert provenance["packages"]["pandas"] == pd.__version__
    json.dumps(provenance)  # must be storable in meta.json as is
