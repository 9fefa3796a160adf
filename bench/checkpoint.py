"""Checkpoints: one dict, written atomically, that resumes a run exactly.

Holds the method state (trainable, old and EMA adapters, optimizer, optimizer step), the epoch to continue from,
cumulative counters (wall-clock, images, passes) and every RNG state. The rollout and training noise are drawn from
generators seeded by (seed, epoch, rank), so restoring the epoch restores the sampler position and the noise.
"""
from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import torch

from bench.records import atomic_write

FILE = "checkpoint.pt"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, state: dict) -> Path:
    """Write ``folder/checkpoint.pt`` atomically (a crash leaves the previous checkpoint intact)."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({**state, "rng": rng_state()}, buf)
    data = buf.getvalue()
    path = folder / FILE
    atomic_write(path, lambda handle: handle.write(data))
    return path


def load(folder: Path) -> dict | None:
    path = Path(folder) / FILE
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"{path}: cannot read the checkpoint ({e}); delete it to start the run over") from e
    set_rng_state(state["rng"])
    return state


def exists(folder: Path) -> bool:
    return os.path.exists(Path(folder) / FILE)
