"""Compaction of a run's Parquet parts: killed at any step it loses and duplicates nothing, and runs resume after it."""
from __future__ import annotations

import os
import pathlib
import shutil
from pathlib import Path

import pandas as pd
import pytest

import bench.records as records
from bench.records import RunRecorder, compact_run, live_parts, load_results

META = {"method": "nft", "world": "toy", "reward": "geneval", "seed": 0, "provenance": {"test": True}}
RUN = "run-c"


class Crash(Exception):
    """Stands for the process dying: raised by the k-th file-system step and by every step after it."""


def log_epochs(root: Path, epochs: range) -> None:
    """Append one part per epoch to run ``RUN`` under ``root`` (resuming it when it exists)."""
    recorder = RunRecorder(root, RUN, META)
    for epoch in epochs:
        recorder.log(epoch, {"reward/avg_mean": epoch / 10, "cum/wall_s": 2.0 * epoch}, timestamp=100.0 + epoch)
        recorder.flush()


def rows(root: Path) -> pd.DataFrame:
    """Every readable row, in a canonical order (compaction may reorder files, never rows' content)."""
    df = load_results(root, with_meta=False)
    return df.sort_values(["epoch", "key"], ignore_index=True)


def record_files(root: Path) -> list[str]:
    """Names of every file in the run's records folder, hidden ones included."""
    return sorted(path.name for path in (root / RUN / "records").iterdir())


@pytest.fixture(params=["parts", "compacted-then-resumed"])
def run_root(request, tmp_path) -> Path:
    """A run of five epochs: five single parts, or three epochs compacted into one file plus two parts appended
    after a resume."""
    root = tmp_path / "pristine"
    if request.param == "parts":
        log_epochs(root, range(5))
    else:
        log_epochs(root, range(3))
        compact_run(root / RUN)
        log_epochs(root, range(3, 5))
    return root


def crash_at_step(monkeypatch, step: int) -> None:
    """Make the ``step``-th call (from 1) of any step that changes the folder -- writing the temp file, fsync,
    os.replace, deleting a file -- raise :class:`Crash`, and every later one too, as if the process died there."""
    calls = {"n": 0}

    def dying(real):
        def call(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] >= step:
                raise Crash(f"killed at step {calls['n']}")
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(records.pq, "write_table", dying(records.pq.write_table))
    monkeypatch.setattr(os, "fsync", dying(os.fsync))
    monkeypatch.setattr(os, "replace", dying(os.replace))
    monkeypatch.setattr(pathlib.Path, "unlink", dying(pathlib.Path.unlink))


def test_compaction_killed_at_every_step_loses_and_duplicates_nothing(run_root, tmp_path):
    expected = rows(run_root)
    assert sorted(expected["epoch"].unique()) == [0, 1, 2, 3, 4] and len(expected) == 10
    finished = False
    step = 0
    while not finished:
        step += 1
        assert step < 50, "compaction never finished"
        root = tmp_path / f"step-{step}"
        shutil.copytree(run_root, root)
        with pytest.MonkeyPatch.context() as patch:
            crash_at_step(patch, step)
            try:
                compact_run(root / RUN)
                finished = True  # this step number is past the last step: nothing was killed
            except Crash:
                pass
        pd.testing.assert_frame_equal(rows(root), expected, obj=f"rows after a kill at step {step}")
        assert RunRecorder(root, RUN, META).last_epoch() == 4  # a resume right after the kill starts at epoch 5
        pd.testing.assert_frame_equal(rows(root), expected, obj=f"rows after a resume at step {step}")
        target = compact_run(root / RUN)
        assert target.name == "part-000000-000004.parquet" and record_files(root) == [target.name], step
        pd.testing.assert_frame_equal(rows(root), expected, obj=f"rows after compacting again at step {step}")
    assert step > 5  # the write, its fsync, the replace and the deletions were all killed once


def test_resume_after_compaction_appends_and_compacts_again(tmp_path):
    log_epochs(tmp_path, range(4))
    assert compact_run(tmp_path / RUN).name == "part-000000-000003.parquet"
    assert compact_run(tmp_path / RUN).name == "part-000000-000003.parquet"  # idempotent
    resumed = RunRecorder(tmp_path, RUN, META)
    assert resumed.last_epoch() == 3
    with pytest.raises(records.EpochAlreadyFlushedError, match="start at epoch 4"):
        resumed.log(3, {"reward/avg_mean": 0.0})
    resumed.log(4, {"reward/avg_mean": 0.4})
    assert resumed.flush().name == "part-000004.parquet"
    assert sorted(rows(tmp_path)["epoch"].unique()) == [0, 1, 2, 3, 4]
    assert compact_run(tmp_path / RUN).name == "part-000000-000004.parquet"
    assert record_files(tmp_path) == ["part-000000-000004.parquet"]
    assert len(rows(tmp_path)) == 4 * 2 + 1
    assert RunRecorder(tmp_path, RUN, META).last_epoch() == 4


def test_readers_skip_covered_parts_and_compaction_of_nothing(tmp_path):
    log_epochs(tmp_path, range(3))
    records_dir = tmp_path / RUN / "records"
    kept = {path.name: path.read_bytes() for path in records_dir.iterdir()}
    compact_run(tmp_path / RUN)
    for name, data in kept.items():  # as if the deletions never happened
        (records_dir / name).write_bytes(data)
    assert [path.name for path in live_parts(records_dir)] == ["part-000000-000002.parquet"]
    assert len(rows(tmp_path)) == 6
    assert compact_run(tmp_path / "no-such-run") is None
    (tmp_path / "empty-run" / "records").mkdir(parents=True)
    assert compact_run(tmp_path / "empty-run") is None


def test_load_results_lists_again_when_a_compaction_deletes_parts_under_it(tmp_path, monkeypatch):
    log_epochs(tmp_path, range(3))
    real_read = pd.read_parquet
    calls = []

    def compaction_in_between(parts, *args, **kwargs):
        calls.append(len(parts))
        if len(calls) == 1:
            compact_run(tmp_path / RUN)  # deletes the parts this call was about to read
        return real_read(parts, *args, **kwargs)

    monkeypatch.setattr(records.pd, "read_parquet", compaction_in_between)
    assert len(load_results(tmp_path, with_meta=False)) == 6 and calls == [3, 1]


def test_command_line_compacts_every_run_under_a_root(tmp_path, capsys):
    for run in ("run-a", "run-b"):
        recorder = RunRecorder(tmp_path / "nested", run, META)
        for epoch in range(3):
            recorder.log(epoch, {"reward/avg_mean": epoch})
            recorder.flush()
    before = rows(tmp_path / "nested")
    done = records.main(["compact", "--all", str(tmp_path)])
    assert [path.name for path in done] == ["part-000000-000002.parquet"] * 2
    assert "3 files -> part-000000-000002.parquet" in capsys.readouterr().out
    pd.testing.assert_frame_equal(rows(tmp_path / "nested"), before)
    with pytest.raises(SystemExit) as exit_info:
        records.main(["compact", str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "no folder" in capsys.readouterr().err


def test_a_finished_run_is_compacted_and_a_crashed_one_is_not(tmp_path):
    from bench.trainer import Trainer
    from tests.tiny import tiny_config, tiny_policy

    finished = Trainer(tiny_config("nft", tmp_path / "ok", "run_id=r", epochs=2), policy=tiny_policy())
    finished.run()
    assert [p.name for p in (tmp_path / "ok" / "r" / "records").iterdir()] == ["part-000000-000001.parquet"]

    crashing = Trainer(tiny_config("nft", tmp_path / "crash", "run_id=r", epochs=3), policy=tiny_policy())
    train_epoch = crashing.method.train_epoch

    def dies_in_the_third_epoch(batch, epoch, generator):
        if epoch == 2:
            raise RuntimeError("killed")
        return train_epoch(batch, epoch, generator)

    crashing.method.train_epoch = dies_in_the_third_epoch
    with pytest.raises(RuntimeError, match="killed"):
        crashing.run()
    crashing.rewards.close()
    parts = sorted(p.name for p in (tmp_path / "crash" / "r" / "records").iterdir())
    assert parts == ["part-000000.parquet", "part-000001.parquet"]
