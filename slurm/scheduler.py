"""SLURM's own commands, read from Python: the partitions a request can go to (``scontrol``, ``sinfo``), the jobs the
controller still knows (``squeue``) and, where accounting runs, how jobs ended (``sacct``).

Every query returns None when its command is missing or the controller does not answer, so that callers can tell
"SLURM says there is no such job" (an empty answer) from "SLURM cannot be asked here" (None).
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

QUERY_TIMEOUT_S = 30
_UNLIMITED = ("UNLIMITED", "INFINITE", "NONE", "NOT_SET", "INVALID", "")
_GPU_GRES = re.compile(r"\bgpu(?::[^:,()\s]+)?:(\d+)")  # gpu:4, gpu:a100:4, gpu:a100:4(S:0-1)
_SQUEUE_FIELDS = "JobArrayID:|,State:|,Reason:|,RestartCnt:|"


@dataclass(frozen=True)
class Partition:
    """What one job may ask of a partition: its limits and its largest node."""

    name: str
    is_default: bool
    max_time_min: float | None
    """Longest time limit a job may ask for, in minutes (None: unlimited)."""
    max_nodes: int | None
    """Most nodes one job may use (None: every node of the partition)."""
    nodes: int
    node_cpus: int
    node_memory_mb: int
    node_gpus: int


@dataclass(frozen=True)
class QueuedJob:
    """A job as ``squeue`` shows it: state (PENDING, RUNNING...), the reason it waits, how often it was requeued."""

    state: str
    reason: str
    restarts: int


def run(args: list[str]) -> subprocess.CompletedProcess[str] | None:
    """``args`` run to completion with text output, or None when the command is not installed or hangs."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None


def seconds(text: str) -> float | None:
    """A SLURM duration in seconds; None for an unlimited one.

    Formats (``man sbatch``, --time): ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``; also UNLIMITED.
    """
    text = text.strip().upper()
    if text in _UNLIMITED:
        return None
    days, _, clock = text.rpartition("-")
    fields = [int(part) for part in clock.split(":")]
    if days:
        hours, minutes, secs = (fields + [0, 0])[:3]
    else:
        hours, minutes, secs = {1: (0, fields[0], 0), 2: (0, *fields), 3: tuple(fields)}[len(fields)]
    return float(((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + secs)


def _number(text: str) -> int | None:
    """An integer field of scontrol (None for UNLIMITED)."""
    return None if text.upper() in _UNLIMITED else int(text)


def _key_values(line: str) -> dict[str, str]:
    """``scontrol show ... --oneliner`` output: space-separated ``Key=Value`` pairs."""
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def gpu_count(gres: str) -> int:
    """GPUs in a node's GRES text (``gpu:4``, ``gpu:a100:2(S:0-1),gpu:v100:2``; ``(null)`` -> 0)."""
    return sum(int(count) for count in _GPU_GRES.findall(gres))


def partitions() -> dict[str, Partition] | None:
    """Every partition with its limits and its largest node, or None when SLURM cannot be asked."""
    limits = run(["scontrol", "show", "partition", "--oneliner"])
    nodes = run(["sinfo", "--noheader", "--Node", "--format=%P|%c|%m|%G"])
    if limits is None or nodes is None or limits.returncode or nodes.returncode:
        return None
    largest: dict[str, tuple[int, int, int]] = {}
    for line in nodes.stdout.splitlines():
        name, cpus, memory, gres = line.strip().split("|")
        name = name.rstrip("*")
        node = (int(cpus.rstrip("+")), int(memory.rstrip("+")), gpu_count(gres))
        largest[name] = tuple(max(a, b) for a, b in zip(largest.get(name, (0, 0, 0)), node))  # type: ignore[assignment]
    found = {}
    for line in limits.stdout.splitlines():
        fields = _key_values(line)
        name = fields.get("PartitionName")
        if not name:
            continue
        max_time = seconds(fields.get("MaxTime", "UNLIMITED"))
        cpus, memory, gpus = largest.get(name, (0, 0, 0))
        found[name] = Partition(name=name, is_default=fields.get("Default") == "YES",
                                max_time_min=None if max_time is None else max_time / 60,
                                max_nodes=_number(fields.get("MaxNodes", "UNLIMITED")),
                                nodes=int(fields.get("TotalNodes", 0)), node_cpus=cpus, node_memory_mb=memory,
                                node_gpus=gpus)
    return found


def queued_jobs(job_ids: list[str]) -> dict[str, QueuedJob] | None:
    """The jobs of ``job_ids`` (``123`` or array tasks ``123_4``) that the controller still knows, whatever their
    state (finished jobs stay listed for MinJobAge, 5 minutes by default); None when squeue cannot be asked."""
    if not job_ids:
        return {}
    done = run(["squeue", "--noheader", "--array", "--states=all", f"--jobs={','.join(job_ids)}",
                f"--Format={_SQUEUE_FIELDS}"])
    if done is None:
        return None
    if done.returncode:
        return {} if "Invalid job id" in done.stderr else None  # every id unknown: all of them left the queue
    jobs = {}
    for line in done.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) >= 4 and fields[0] in job_ids:
            jobs[fields[0]] = QueuedJob(state=fields[1], reason=fields[2], restarts=int(fields[3] or 0))
    return jobs


def accounted_states(job_ids: list[str]) -> dict[str, str] | None:
    """Each job's last state in SLURM's accounting (``sacct``), or None without accounting."""
    if not job_ids:
        return {}
    done = run(["sacct", "--noheader", "--parsable2", "--allocations", f"--jobs={','.join(job_ids)}",
                "--format=JobID,State"])
    if done is None or done.returncode:
        return None
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, state = line.partition("|")
        if job_id in job_ids and state:
            states[job_id] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return states


def time_left_s(job_id: str) -> float | None:
    """Seconds until job ``job_id`` reaches its time limit, or None (unlimited, or SLURM cannot be asked)."""
    done = run(["squeue", "--noheader", f"--jobs={job_id}", "--format=%L"])
    if done is None or done.returncode or not done.stdout.strip():
        return None
    return seconds(done.stdout.strip().splitlines()[0])
