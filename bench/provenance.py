"""What produced a run, recorded in its meta.json: git commit, package versions, host, hardware, threads, SLURM."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "numpy", "pandas", "pyarrow")
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST")


def collect_provenance() -> dict[str, Any]:
    """What produced a run: git commit (+ whether tracked files were modified), versions, host and hardware.

    Every field degrades to ``None`` / empty rather than failing: provenance must never stop a run from starting.
    """
    repo = Path(__file__).resolve().parents[1]
    commit = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": commit,
        "git_dirty": None if commit is None or status is None else bool(status),
        "python": platform.python_version(),
        "packages": {name: _package_version(name) for name in _PACKAGES},
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "torch_threads": _torch_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "gpus": _gpu_names(),
        "slurm": {name: os.environ[name] for name in _SLURM_VARS if name in os.environ},
    }


def _torch_threads() -> int | None:
    """Intra-op threads torch computes with (runs side by side with ``OMP_NUM_THREADS=1`` say so here)."""
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None


def _git(repo: Path, *args: str) -> str | None:
    """Output of a read-only git command, or None when git or the commit is unavailable."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # never take the index lock: other runs may be using git
    try:
        done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _gpu_names() -> list[str]:
    try:
        import torch  # imported lazily: reading results must not need torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
