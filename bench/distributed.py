"""Process-group set-up for multi-GPU and multi-node runs, under torchrun or inside a submitit (SLURM) job.

The trainer only asks torch.distributed for its world size and rank, so the whole job of this module is to find out
who we are from the launcher and to initialise the process group once, before any Trainer is built:

* **torchrun** (``torchrun --nproc_per_node N -m bench.run ...``) exports ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR`` and ``MASTER_PORT``;
* **submitit** (``python -m slurm.submit``) starts one process per task with SLURM's variables; submitit's
  ``JobEnvironment`` turns them into a global rank, a task count and a local rank, and the first node of the job's
  node list is the rendezvous host.

NCCL is used on CUDA and gloo on CPU (the CPU path is what the 2-process equivalence test runs). A single process
(no launcher, or a launcher with one task) stays without a process group: that is the code path of every CPU run.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

_DEFAULT_PORT_BASE = 29500


def _from_torchrun() -> tuple[int, int, int] | None:
    """(world_size, rank, local_rank) from torchrun's variables, or None when torchrun did not start us."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank = int(os.environ["RANK"])
    return int(os.environ["WORLD_SIZE"]), rank, int(os.environ.get("LOCAL_RANK", rank))


def _from_submitit() -> tuple[int, int, int] | None:
    """(world_size, rank, local_rank) from submitit's job environment, or None outside a submitit job.

    Also exports MASTER_ADDR (the job's first node) and a MASTER_PORT derived from the job id, so that two jobs
    sharing a node do not collide and every task of one job computes the same port without talking to the others.
    """
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        os.environ.setdefault("MASTER_ADDR", env.hostnames[0])
        digits = "".join(ch for ch in str(env.job_id) if ch.isdigit()) or "0"
        os.environ.setdefault("MASTER_PORT", str(_DEFAULT_PORT_BASE + int(digits) % 20000))
    return env.num_tasks, env.global_rank, env.local_rank


def init_distributed() -> tuple[int, int, int]:
    """Initialise torch.distributed from torchrun or submitit; returns ``(world_size, rank, local_rank)``.

    Idempotent (a second call returns the existing group's numbers) and a no-op for a single process, so entry
    points can call it unconditionally. On CUDA it also selects ``cuda:local_rank`` as the current device, which
    NCCL collectives and ``torch.device("cuda")`` rely on.
    """
    found = _from_torchrun() or _from_submitit() or (1, 0, 0)
    world_size, rank, local_rank = found
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank(), local_rank
    if world_size <= 1:
        return 1, 0, 0
    if not dist.is_available():
        raise RuntimeError(f"{world_size} processes were launched but this torch build has no torch.distributed")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_DEFAULT_PORT_BASE))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", world_size=world_size, rank=rank)
    return world_size, rank, local_rank


def local_device(local_rank: int, requested: str = "") -> str:
    """The device string a rank should train on: ``cuda:<local_rank>`` for "" or "cuda" on a GPU machine.

    An explicit device such as ``cpu`` or ``cuda:3`` is kept as given.
    """
    if requested in ("", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank}"
    return requested or "cpu"


def barrier() -> None:
    """Wait for every rank (no-op without a process group): e.g. before rank 0 marks a run as done."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown_distributed() -> None:
    """Tear the process group down after a final barrier, so no rank exits while another still communicates."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
