"""slurm.submit / slurm.status end to end on submitit's LocalExecutor with the tiny model (no cluster needed), and
their SLURM logic against SLURM's answers written out here (tests/test_slurm_real.py asks a real cluster).

A grid of three tiny tasks completes and writes three result sets; a task SIGKILLed after its first checkpoint and
resubmitted ends with the same records as an uninterrupted run; a finished grid submitted again runs nothing, nor
does a grid whose jobs still run, and a second process writing the same run is refused before it writes; --dry-run
names every resolved setting; requests a partition can never run, and sbatch's refusals, become one line naming the
flag to change; status reads SLURM's states (pending with its reason, requeued, gone) without sacct; a USR2 with
time left is a preemption, not a timeout.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.records import RunRecorder, load_results
from slurm import checks, scheduler, status, submit, tasks
from slurm.scheduler import Partition, QueuedJob
from tests.tiny import train_records

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
    pd.testing.assert_series_equal(train_records(tmp_path / "straight"), train_records(tmp_path / "killed"))


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


def test_dry_run_of_one_task_renders_a_plain_job(tmp_path, capsys):
    """submitit submits a single task as a plain job, not an array of one: the dry run shows what it will submit."""
    submit.main(["--methods", "nft", "--seeds", "0", "--gpus-per-node", "0", "--folder", str(tmp_path / "jobs"),
                 "--dry-run", f"out={tmp_path / 'res'}"])
    out = capsys.readouterr().out
    assert "#SBATCH --ntasks-per-node=1" in out and "--array" not in out and "--signal=USR2@90" in out


def test_resubmitting_a_running_grid_submits_nothing(tmp_path, capsys):
    argv = [a for a in _argv(tmp_path, "res", "nft", 3) if a != "--wait"]
    (job,) = submit.main(argv)  # returns at once; the local job runs in the background
    assert submit.main(argv) == []
    out = capsys.readouterr().out
    assert f"job {job.job_id} is running, skipped" in out and "has a live job: nothing to submit" in out
    (submitted,) = tasks.read_manifest(tmp_path / "jobs")  # one line: the second submission added none
    ((_, state),) = tasks.wait(tmp_path / "jobs", [submitted["run_id"]], poll_s=1)
    assert state.state == "done"


def test_a_second_writer_of_a_run_is_refused_before_it_writes(tmp_path):
    meta = {"method": "nft", "world": "shapes", "reward": "brightness", "seed": 0}
    recorder = RunRecorder(tmp_path, "run", meta)
    recorder.log(1, {"loss": 1.0})
    recorder.flush()
    again = RunRecorder(tmp_path, "run", meta)  # this process again (a resumed Trainer): allowed
    code = f"from bench.records import RunRecorder\nRunRecorder({str(tmp_path)!r}, 'run', {meta!r})"
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert other.returncode != 0
    assert f"RunLockedError: run run is being written by another process (pid {os.getpid()}" in other.stderr
    assert [p.name for p in (tmp_path / "run" / "records").iterdir()] == ["part-000000.parquet"]
    del recorder, again  # the lock goes with the last recorder of this process
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60).returncode == 0


# ------------------------------------------------------------------------------------------------ SLURM's answers
def _task(tmp: Path, run_id: str, job_id: str) -> dict:
    return {"run_id": run_id, "method": "nft", "reward": "brightness", "seed": 0, "out": str(tmp / "res"),
            "executor": "slurm", "job_id": job_id}


def _finished(tmp: Path, run_id: str) -> None:
    (tmp / "res" / run_id).mkdir(parents=True)
    (tmp / "res" / run_id / "summary.json").write_text("{}")
    tasks.write_done(tmp / "res", run_id, "other", {})


def test_status_reads_the_queue_without_sacct(tmp_path, monkeypatch):
    queue = {"1_0": QueuedJob("PENDING", "Priority", 0), "1_1": QueuedJob("PENDING", "PartitionConfig", 0),
             "1_2": QueuedJob("PENDING", "BeginTime", 2), "1_3": QueuedJob("REQUEUED", "None", 1),
             "1_4": QueuedJob("RUNNING", "None", 1), "1_5": QueuedJob("CANCELLED", "None", 0)}
    monkeypatch.setattr(scheduler, "queued_jobs", lambda ids: {i: queue[i] for i in ids if i in queue})
    monkeypatch.setattr(scheduler, "accounted_states", lambda ids: None)  # no accounting on this cluster
    jobs = [*queue, "1_6", "1_7"]  # 1_6 left the queue without a result; 1_7 crashed beside a finished run
    _finished(tmp_path, "r7")
    with open(tmp_path / "1_7_0_result.pkl", "wb") as handle:
        pickle.dump(("error", "Traceback (most recent call last):\nRunLockedError: run r7 is being written"), handle)
    tasks.append_manifest(tmp_path, [_task(tmp_path, f"r{i}", job) for i, job in enumerate(jobs)])
    table = status.status_table(tmp_path)
    assert list(table.state) == ["pending", "pending", "requeued", "requeued", "running", "failed", "failed",
                                 "failed"]
    notes = list(table.note)
    assert notes[0] == "Priority" and "never starts" in notes[1] and "scancel it" in notes[1]
    assert notes[2] == "requeued 2 time(s), BeginTime" and notes[4] == "requeued 1 time(s)"
    assert "CANCELLED" in notes[5] and "left the queue" in notes[6] and notes[7].startswith("RunLockedError")


def test_status_without_any_scheduler_falls_back_to_the_records(tmp_path, monkeypatch):
    monkeypatch.setattr(scheduler, "queued_jobs", lambda ids: None)
    monkeypatch.setattr(scheduler, "accounted_states", lambda ids: {"2": "PREEMPTED"})
    tasks.append_manifest(tmp_path, [_task(tmp_path, "a", "1"), _task(tmp_path, "b", "2")])
    states = tasks.task_states(tasks.read_manifest(tmp_path), tmp_path, [True, False])
    assert states == [tasks.TaskState("running", "no scheduler to ask here"), tasks.TaskState("requeued", "PREEMPTED")]


PARTITIONS = {"cpu": Partition("cpu", True, 60.0, None, 1, 2, 8192, 0),
              "gpu": Partition("gpu", False, None, 2, 4, 32, 256000, 4)}


@pytest.mark.parametrize("flags,fix", [
    ({}, "partition cpu has no GPUs: pass --gpus-per-node 0"),
    ({"gpus_per_node": 0, "tasks_per_node": 1}, "pass --cpus-per-task 2 or fewer"),
    ({"gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1, "nodes": 2}, "pass --nodes 1 or fewer"),
    ({"gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1, "time_min": 61}, "pass --time-min 60 or less"),
    ({"gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1, "mem_gb": 9}, "pass --mem-gb 8 or less"),
    ({"partition": "gpu", "gpus_per_node": 8, "tasks_per_node": 8}, "pass --gpus-per-node 4 or fewer"),
    ({"partition": "gpu", "nodes": 3}, "at most 2 node(s)"),
    ({"partition": "h100"}, "--partition h100: there is no such partition here; pass one of cpu, gpu"),
], ids=["gpus", "cpus", "nodes", "time", "memory", "gpus-per-node", "nodes-per-job", "partition"])
def test_requests_a_partition_can_never_run_are_named_with_their_fix(flags, fix):
    request = checks.Request(**{"partition": None, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 8,
                                "gpus_per_node": 1, "mem_gb": 0, "time_min": 30, **flags})
    assert fix in checks.request_problem(request, PARTITIONS)
    fitting = checks.Request("gpu", 2, 4, 8, 4, 250, 10000)
    assert checks.request_problem(fitting, PARTITIONS) is None


@pytest.mark.parametrize("stderr,fix", [
    ("sbatch: error: Invalid generic resource (gres) specification", "pass --gpus-per-node 0"),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
     "--account lab: not an account of yours"),
    ("sbatch: error: Memory specification can not be satisfied\nsbatch: error: Batch job submission failed: "
     "Requested node configuration is not available", "--mem-gb 64: no node of the partition"),
    ("sbatch: error: Batch job submission failed: Invalid qos specification", "--qos high: not a QOS you may use"),
    ("sbatch: error: Batch job submission failed: Something new", "Something new; fix the flag it names"),
], ids=["gres", "account", "memory", "qos", "unknown"])
def test_sbatch_refusals_become_one_line_with_the_fix(stderr, fix):
    flags = {"partition": "cpu", "mem_gb": 64, "constraint": None, "account": "lab", "qos": "high", "time_min": 30}
    line = checks.sbatch_refusal(stderr, flags)
    assert fix in line and "\n" not in line and line.startswith("sbatch refused the job")


def test_slurm_durations_parse():
    assert [scheduler.seconds(t) for t in ("30", "5:30", "1:00:00", "2-3", "2-03:04:05", "UNLIMITED")] == [
        1800, 330, 3600, 2 * 86400 + 3 * 3600, 2 * 86400 + 3 * 3600 + 4 * 60 + 5, None]
    assert scheduler.gpu_count("gpu:a100:2(S:0-1),gpu:v100:2,mps:100") == 4 and scheduler.gpu_count("(null)") == 0


def test_submission_refused_before_sbatch_leaves_nothing(tmp_path, capsys):
    argv = _argv(tmp_path, "res", "nft", 2)
    for bad, fix in ((["--time-min", "2"], "2 is below 5; give the time limit per task in minutes, at least 5"),
                     (["train_prompts=nosuch"], "setting train_prompts: prompt set 'nosuch' does not load here")):
        with pytest.raises(SystemExit) as exit_:
            submit.main([*argv, *bad])
        assert exit_.value.code == 2 and fix in capsys.readouterr().err
    assert not (tmp_path / "jobs").exists() and not (tmp_path / "res").exists()


class _Handler:
    """Stands in for submitit's SignalHandler: its rule would call every signal a timeout."""

    def has_timed_out(self) -> bool:
        return True

    def on_signal(self, signum, frame) -> None:
        pass


@pytest.mark.parametrize("left,timed_out", [(600.0, False), (120.0, True), (None, True)])
def test_a_signal_with_time_left_is_a_preemption_not_a_timeout(monkeypatch, left, timed_out):
    handler = _Handler()
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setattr(scheduler, "time_left_s", lambda job_id: left)
    previous = signal.signal(signal.SIGUSR2, handler.on_signal)
    try:
        submit.count_only_real_timeouts()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert handler.has_timed_out() is timed_out  # None: SLURM cannot say, submitit's own rule decides


def test_the_done_marker_names_the_job_that_finished_the_run(tmp_path):
    _finished(tmp_path, "r")
    assert json.loads((tmp_path / "res" / "r" / submit.DONE_FILE).read_text())["job_id"] == "other"
    assert submit.run_is_done(tmp_path / "res", "r")


def test_submitting_from_outside_the_cluster_says_where_to_submit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(submit.shutil, "which", lambda command: None)
    with pytest.raises(SystemExit) as refused:
        submit.main(["--methods", "nft", "--seeds", "0", "--gpus-per-node", "0", "--folder", str(tmp_path / "jobs"),
                     f"out={tmp_path / 'res'}"])
    assert refused.value.code == 2 and "sbatch and srun not found: submit from a machine of the SLURM cluster, or " \
                                       "pass --executor local" in capsys.readouterr().err
    assert not (tmp_path / "jobs").exists()
