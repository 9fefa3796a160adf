"""The cluster path on a real SLURM: slurm.submit and slurm.status against slurmctld, sbatch, squeue and scontrol.

Needs a reachable SLURM cluster: ``sudo bash .ci/slurm_up.sh`` starts a single-node one on a Debian/Ubuntu machine
(``.ci/run`` does, and sets ``FLOWRL_REQUIRE_SLURM=1`` so that these tests fail rather than skip in CI). The cluster
has no accounting (no ``sacct``), so status works from squeue alone, as on many clusters seen from a login node.

* A 2-task grid (tiny model) is submitted; while it runs, submitting it again submits nothing. Task 0 gets USR2 as a
  preemption would send it (submitit checkpoints and requeues it; with minutes left it is not counted as a timeout),
  task 1 is ``scontrol requeue``-d (SIGTERM, killed, requeued by SLURM). Status shows both ``requeued``, then
  ``done``; every recorded value equals that of the same grid run straight through on this machine; and the
  finished grid submitted again submits nothing.
* A job waiting for its begin time shows ``pending`` with SLURM's reason; cancelled, it shows ``failed`` and
  ``--wait`` returns with the failure instead of hanging.
* Requests the partition can never run, and one sbatch refuses, are refused in one line naming the fix, and leave
  no file behind.
"""
from __future__ import annotations

import pickle
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from slurm import scheduler, status, submit, tasks
from tests.needs import need
from tests.test_slurm import ROOT, TINY, _job_env  # noqa: F401 (_job_env: autouse, sbatch
#   passes the test's environment to the jobs)
from tests.tiny import train_records

# Long enough that a task requeued after its first checkpoint is still training when SLURM kills it (KillWait, 10 s
# on the CI cluster, during which it ignores SIGTERM and trains on), short enough for CI (~30 s of training a task).
EPOCHS = 80
CPU_TASK = ("--gpus-per-node", "0", "--cpus-per-task", "1", "--time-min", "10")
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def partition() -> scheduler.Partition:
    """The cluster's default partition; skips (fails under FLOWRL_REQUIRE_SLURM=1) when no cluster answers."""
    found = scheduler.partitions()
    default = [p for p in (found or {}).values() if p.is_default]
    need("slurm", None if default else "no SLURM cluster with a default partition answers here (scontrol/sinfo): "
                                       "start a single-node one with `sudo bash .ci/slurm_up.sh`")
    return default[0]


def _argv(tmp: Path, out: str, folder: str, *extra: str, seeds: str = "0,1", epochs: int = EPOCHS,
          resources: tuple[str, ...] = CPU_TASK) -> list[str]:
    return ["--methods", "nft", "--seeds", seeds, "--epochs", str(epochs), *resources, "--folder", str(tmp / folder),
            "--policy-factory", "tests.tiny:tiny_policy", "--poll-s", "1", *extra, *TINY, f"out={tmp / out}"]


def _states(folder: Path) -> dict[str, tasks.TaskState]:
    manifest = tasks.read_manifest(folder)
    return {t["run_id"]: s for t, s in zip(manifest, tasks.task_states(manifest, folder, [False] * len(manifest)))}


def _until(condition, what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.2)


def _signal_after_first_checkpoint(out: Path, task: dict, command: list[str]) -> None:
    """Run ``command`` on the task's job once its run has an epoch checkpoint (mid-run)."""
    _until(lambda: (out / task["run_id"] / "checkpoint.pt").exists(), f"{task['run_id']}'s first checkpoint")
    subprocess.run([*command, task["job_id"]], check=True, capture_output=True, timeout=60)


@pytest.mark.slow
def test_requeued_grid_resumes_exactly_and_is_submitted_once(tmp_path, partition, capsys):
    argv = _argv(tmp_path, "cluster", "jobs")
    assert len(submit.main(argv)) == 2
    folder, out = tmp_path / "jobs", tmp_path / "cluster"
    assert {s.state for s in _states(folder).values()} <= {"pending", "running"}
    assert submit.main(argv) == []  # the same grid while its jobs are live: nothing submitted twice
    assert capsys.readouterr().out.count("skipped") == 2
    preempted, requeued = tasks.read_manifest(folder)
    _signal_after_first_checkpoint(out, requeued, ["scontrol", "requeue"])
    _signal_after_first_checkpoint(out, preempted, ["scancel", "--signal=USR2"])
    seen: dict[str, set[str]] = {preempted["run_id"]: set(), requeued["run_id"]: set()}

    def ended() -> bool:
        for run_id, state in _states(folder).items():
            seen[run_id].add(state.state)
        return all("done" in states or "failed" in states for states in seen.values())

    _until(ended, "both tasks to end")
    assert all({"requeued", "done"} <= states and "failed" not in states for states in seen.values()), seen
    table = status.main(["--folder", str(folder)])
    assert list(table.state) == ["done", "done"] and list(table.epoch) == [EPOCHS, EPOCHS]
    with open(folder / f"{preempted['job_id']}_submitted.pkl", "rb") as handle:
        assert pickle.load(handle)._timeout_countdown == 1000  # a preemption spent none of --max-timeouts
    submit.main(_argv(tmp_path, "straight", "local", "--executor", "local", "--wait"))
    for task in (preempted, requeued):
        pd.testing.assert_series_equal(train_records(out, task["run_id"]),
                                       train_records(tmp_path / "straight", task["run_id"]), check_exact=True)
    capsys.readouterr()
    assert submit.main(argv) == [] and "every run of the grid is done" in capsys.readouterr().out


@pytest.mark.slow
def test_pending_job_says_why_and_a_cancelled_one_fails_the_wait(tmp_path, partition):
    argv = _argv(tmp_path, "res", "jobs", "--sbatch-extra", "begin=now+3600", "--wait", seeds="0", epochs=1)
    waiting = subprocess.Popen([sys.executable, "-m", "slurm.submit", *argv], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _until(lambda: tasks.read_manifest(tmp_path / "jobs"), "the submission", timeout=120)
        (state,) = _states(tmp_path / "jobs").values()
        assert state == tasks.TaskState("pending", "BeginTime")
        subprocess.run(["scancel", tasks.read_manifest(tmp_path / "jobs")[0]["job_id"]], check=True, timeout=60)
        _, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 1 and "1 of 1 tasks failed" in err and "CANCELLED" in err
    assert err.count("sacct") == 0
    (state,) = _states(tmp_path / "jobs").values()
    assert state.state == "failed"


@pytest.mark.parametrize("bad,fix", [
    ((), "has no GPUs: pass --gpus-per-node 0"),
    (("--gpus-per-node", "0", "--cpus-per-task", "{cpus}"), "pass --cpus-per-task {fits} or fewer"),
    ((*CPU_TASK, "--nodes", "{nodes}"), "pass --nodes {fits_nodes} or fewer"),
    ((*CPU_TASK, "--time-min", "{minutes}"), "pass --time-min {max_minutes} or less"),
    ((*CPU_TASK, "--mem-gb", "{memory}"), "pass --mem-gb {fits_gb} or less"),
    ((*CPU_TASK, "--partition", "nosuch"), "--partition nosuch: there is no such partition here"),
    ((*CPU_TASK, "--constraint", "nosuchfeature"), "sbatch refused the job (Batch job submission failed: Invalid "
                                                   "feature specification): --constraint nosuchfeature"),
], ids=["gpus", "cpus", "nodes", "time", "memory", "partition", "constraint"])
def test_requests_that_cannot_run_are_refused_before_they_queue(tmp_path, partition, capsys, bad, fix):
    if partition.node_gpus or partition.max_time_min is None:
        pytest.skip(f"partition {partition.name} has GPUs or no time limit: these requests are for a CPU partition "
                    "with one, like .ci/slurm_up.sh's")
    limits = {"cpus": partition.node_cpus + 1, "fits": partition.node_cpus, "nodes": partition.nodes + 1,
              "fits_nodes": partition.nodes, "minutes": int(partition.max_time_min) + 1,
              "max_minutes": f"{partition.max_time_min:g}", "memory": partition.node_memory_mb // 1024 + 1,
              "fits_gb": partition.node_memory_mb // 1024}
    with pytest.raises(SystemExit) as refused:
        submit.main(_argv(tmp_path, "res", "jobs", seeds="0", epochs=1, resources=("--time-min", "10"))
                    + [part.format(**limits) for part in bad])
    assert refused.value.code == 2 and fix.format(**limits) in capsys.readouterr().err
    assert not (tmp_path / "jobs").exists() and not (tmp_path / "res").exists()
