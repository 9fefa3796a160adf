"""Worlds: where a run's model, prompts and rewards come from.

- ``shapes`` (default): the built-in CPU-scale GenEval testbed (:mod:`worlds.shapes`), its committed base model,
  its shipped prompt files and its detector-based GenEval reward.
- anything else: a path or hub id of a saved pipeline of any family (:mod:`rollout.families`: SD3 / SD3.5, FLUX.1,
  FLUX.2 klein, Qwen-Image, Z-Image) with the references' prompt sets and the papers' rewards (:mod:`worlds.paper`).

The base class is :class:`worlds.base.World`. Synthetic worlds are small procedural image domains where a reward can
be computed exactly on a CPU.
"""
from __future__ import annotations


def load_world(name: str, task: str = "geneval"):
    """The world called ``name`` ("shapes", or a pipeline path / hub id) at paper task ``task``."""
    if name == "shapes":
        from worlds.shapes.world import SHAPES

        return SHAPES
    from worlds.paper import paper_world

    return paper_world(name, task)
