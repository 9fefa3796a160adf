"""Exact resume on the shapes world itself (the shipped model and the shapes preset), not only on the tiny model.

A run resumed mid-way from its checkpoint must record every value bit for bit as the run that went straight
through. The shapes model's text encoders are what the tiny model cannot show: a batched encoding sums in an order
that depends on the batch, so a prompt encoded together with other uncached prompts got a pooled embedding ~5e-7 off
the one it got alone; a resumed run starts with an empty prompt cache, met repeated prompts in other batches, and
drifted from the straight run (0.095 reward apart after 8 epochs). Ten training prompts, eight per epoch, make every
epoch repeat prompts from the ones before, so a batch-dependent encoding shows up at the first resumed epoch.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.config import resolve
from bench.trainer import Trainer
from tests.tiny import train_records
from worlds.shapes.world import load_prompts


def _prompt_file(tmp: Path, count: int = 10) -> Path:
    """The first ``count`` training prompts of the shapes world as a GenEval metadata file."""
    path = tmp / "prompts.jsonl"
    path.write_text("".join(json.dumps(meta) + "\n" for meta in load_prompts("train").metadata[:count]))
    return path


def _run(out: Path, prompts: Path, epochs: int) -> None:
    """NFT with the shapes preset (shipped model, its rollout and training settings), by epochs instead of a clock,
    evaluated after every epoch on a few test prompts."""
    cfg = resolve({"method": "nft", "seed": 0, "epochs": epochs}, None, [
        "budget_wall_s=0", "run_id=resume", f"train_prompts={prompts}", "eval_every=1", "eval_prompts=4",
        "eval_images_per_prompt=2", "tensorboard=false", "reward_workers=1", f"out={out}"])
    Trainer(cfg).run()


@pytest.mark.slow
def test_shapes_run_resumed_mid_way_records_the_same_values(tmp_path):
    prompts = _prompt_file(tmp_path)
    _run(tmp_path / "straight", prompts, epochs=3)
    _run(tmp_path / "resumed", prompts, epochs=2)  # stops after epoch 2 of 3, as a kill after that checkpoint
    _run(tmp_path / "resumed", prompts, epochs=3)  # a fresh process would start here: a fresh model and cache
    straight, resumed = train_records(tmp_path / "straight"), train_records(tmp_path / "resumed")
    assert sorted(straight.index.get_level_values("epoch").unique()) == [0, 1, 2, 3]
    pd.testing.assert_series_equal(resumed, straight, check_exact=True)
