"""One writer per run: the exclusive lock a process holds on a run folder while it records into it.

``flock`` on ``<run folder>/.writer.lock`` (Linux's NFS client maps it to NFS locks), taken before anything is
written or removed and held until the process ends or drops it, so a second process opening the same run -- a
duplicate job, a second ``--run-id`` -- is refused with :class:`RunLockedError` naming the holder. A killed writer's
lock goes with its process. Used by :class:`bench.records.RunRecorder` and by ``slurm/submit.py`` (which takes the
lock before submitting, so the refusal comes before the job waits in the queue).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import weakref
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no POSIX locks, runs go unlocked
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_FILE = ".writer.lock"


class RunLockedError(RuntimeError):
    """Another process is writing the run (a second job or process for the same run id); nothing was written."""


class WriterLock:
    """This process's exclusive lock on one run folder (see "One writer per run" above).

    Every recorder of the run in this process shares one lock (:func:`writer_lock`); it is released, and its file
    removed, when the last of them is gone or the process exits. The file names the holder for the refusal message.
    """

    def __init__(self, run_dir: Path, run_id: str) -> None:
        self.path = run_dir / LOCK_FILE
        self.fd = _lock_file(self.path, run_id)
        if self.fd is not None:
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                      "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
            os.ftruncate(self.fd, 0)
            os.write(self.fd, json.dumps(holder).encode())
            weakref.finalize(self, _unlock_file, self.path, self.fd, os.getpid())


_WRITERS: "weakref.WeakValueDictionary[str, WriterLock]" = weakref.WeakValueDictionary()


def writer_lock(run_dir: Path, run_id: str) -> WriterLock:
    """The lock on ``run_dir`` that this process holds, taken now if it holds none; :class:`RunLockedError` when
    another process holds it."""
    key = str(run_dir.resolve())
    lock = _WRITERS.get(key)
    if lock is None:
        lock = _WRITERS[key] = WriterLock(run_dir, run_id)
    return lock


def _lock_file(path: Path, run_id: str) -> int | None:
    """An open descriptor of ``path`` holding its exclusive lock; None where the filesystem has no locks.

    A holder that ends removes the file: a lock taken on a file that was removed meanwhile is taken again on the
    file now at ``path``, so two processes can never both hold the lock of one path."""
    if fcntl is None:
        return None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            os.close(fd)
            raise RunLockedError(_held_message(path, run_id)) from None
        except OSError as err:  # e.g. ENOLCK: a filesystem without locks
            os.close(fd)
            logger.warning("run %s: cannot lock %s (%s); a second writer would not be refused", run_id, path, err)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _unlock_file(path: Path, fd: int, owner: int) -> None:
    """Release a lock: remove its file while still holding it, then close it (which releases the lock). Only the
    process that took it does: a forked child that exits must leave its parent's lock alone."""
    if os.getpid() == owner:
        path.unlink(missing_ok=True)
        os.close(fd)


def _held_message(path: Path, run_id: str) -> str:
    """Why run ``run_id`` cannot be opened, naming the process that holds its lock and how to proceed."""
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{job}"
    stop = f"scancel {holder['slurm_job_id']}" if holder.get("slurm_job_id") else f"kill {holder.get('pid', '<pid>')}"
    return (f"run {run_id} is being written by another process ({who}): a second job or process for the same run "
            f"id is refused before it writes anything; wait for that one to end, or stop it ({stop}) and run again")
