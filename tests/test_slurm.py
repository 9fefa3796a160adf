"""slurm.submit / slurm.status end to end on submitit's LocalExecutor with the tiny model (no cluster needed).

A grid of three tiny tasks completes and writes three result sets; a task SIGKILLed after its first checkpoint and
resubmitted ends with the same records as an uninterrupted run; a finished grid submitted again runs nothing;
--dry-run names every resolved setting.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.records import load_results
from slurm import status, submit

ROOT = Path(__file__).resolve().parents[1]
TINY = ["resolution=16", "prompts_per_epoch=4", "images_per_prompt=4", "rollout_batch_size=8", "eval_every=0",
        "eval_prompts=4", "eval_images_per_prompt=1", "reward=brightness", "nft.num_steps=4", "flowgrpo.num_steps=4",
        "cfg.num_steps=4", "nft.train_batch_size=8", "flowgrpo.train_batch_size=8", "lora.rank=4", "lora.alpha=8",
        "tensorboard=false", "reward_workers=1"]


@pytest.fixture(autouse=True)
def _job_env(monkeypatch):
    """Local submitit jobs are fresh interpreters: they must find the repo and stay off the hub and extra cores."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(ROOT)


def _argv(tmp: Path, out: str, methods: str, epochs: int, *extra: str) -> list[str]:
    return ["--methods", methods, "--seeds", "0", "--epochs", str(epochs), "--executor", "local",
            "--gpus-per-node", "0", "--folder", str(tmp / "jobs"), "--policy-factory", "tests.tiny:tiny_policy",
            "--wait", *extra, *TINY, f"out={tmp / out}"]


def _train_records(root: Path) -> pd.Series:
    df = load_results(root)
    df = df[~df.key.str.startswith(("time/", "cum/wall", "cum/cpu", "cum/gpu", "cum/eval"))]
    return df.set_index(["epoch", "key"])["value"].sort_index()


def test_grid_runs_once_and_status_lists_it(tmp_path, capsys):
    jobs = submit.main(_argv(tmp_path, "res", "nft,flowgrpo,cfg", 2))
    assert len(jobs) == 3
    df = load_results(tmp_path / "res")
    assert sorted(df.method.unique()) == ["cfg", "flowgrpo", "nft"] and df.run_id.nunique() == 3
    for run_id in df.run_id.unique():
        assert submit.run_is_done(tmp_path / "res", run_id)
    assert submit.main(_argv(tmp_path, "res", "nft,flowgrpo,cfg", 2)) == []  # finished grid: nothing submitted
    assert "nothing to submit" in capsys.readouterr().out
    table = status.main(["--folder", str(tmp_path / "jobs"), "--results", str(tmp_path / "res")])
    assert list(table.state) == ["done"] * 3
    trained = table[table.method != "cfg"]
    assert list(trained.epoch) == [2, 2] and trained.reward_mean.notna().all()


def test_killed_task_resumes_to_the_same_records(tmp_path):
    submit.main(_argv(tmp_path, "straight", "nft", 4, "--folder", str(tmp_path / "jobs_a")))
    argv = _argv(tmp_path, "killed", "nft", 4, "--folder", str(tmp_path / "jobs_b"))
    proc = subprocess.Popen([sys.executable, "-m", "slurm.submit", *argv], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while not list((tmp_path / "killed").glob("*/checkpoint.pt")) and time.time() < deadline:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # submitter, local controller and task: a node dying mid-run
        proc.wait()
    (run_dir,) = (tmp_path / "killed").iterdir()
    assert (run_dir / "checkpoint.pt").exists() and not submit.run_is_done(tmp_path / "killed", run_dir.name)
    jobs = submit.main(argv)  # the same grid again: same run id, resumes from the checkpoint
    assert len(jobs) == 1 and submit.run_is_done(tmp_path / "killed", run_dir.name)
    assert (tmp_path / "straight" / run_dir.name).exists()  # one run id for the same grid, whatever the --out
    pd.testing.assert_series_equal(_train_records(tmp_path / "straight"), _train_records(tmp_path / "killed"))


def test_dry_run_names_every_setting(tmp_path, capsys):
    submit.main(["--methods", "nft,flowgrpo", "--seeds", "0,3", "--reward", "pickscore", "--partition", "h100q",
                 "--gpus-per-node", "4", "--nodes", "2", "--time-min", "123", "--account", "lab", "--qos", "high",
                 "--sbatch-extra", "mail-type=END", "--folder", str(tmp_path / "jobs"), "--dry-run",
                 f"out={tmp_path / 'res'}"])
    out = capsys.readouterr().out
    for text in ('"method": "nft"', '"method": "flowgrpo"', '"reward": "pickscore"', '"seed": 3',
                 "--partition=h100q", "--gpus-per-node=4", "--ntasks-per-node=4", "--nodes=2", "--time=123",
                 "--account=lab", "--qos=high", "--mail-type=END", "--array=0-3%4", "nft_pickscore_s0_g",
                 "flowgrpo_pickscore_s3_g"):
        assert text in out, text
    assert not (tmp_path / "res").exists() and not (tmp_path / "jobs" / submit.MANIFEST).exists()


def test_train_task_requeues_itself_with_the_same_config():
    """On preemption/timeout submitit pickles what checkpoint() returns and requeues it: the same task and config,
    hence the same run id, so the requeued job resumes from the Trainer's last epoch checkpoint."""
    import pickle

    task = submit.TrainTask("tests.tiny:tiny_policy")
    cfg = {"method": "nft", "seed": 0, "run_id": "nft_brightness_s0_gx"}
    delayed = pickle.loads(pickle.dumps(task.checkpoint(cfg)))
    assert isinstance(delayed.function, submit.TrainTask) and delayed.args == (cfg,)
    assert delayed.function.policy_factory == "tests.tiny:tiny_policy"
