"""Rewards: every reward the papers use, behind one interface (see :mod:`rewards.base`).

``build_reward("pickscore:0.5,hpsv2:0.5", **options)`` or ``build_reward({"geneval": 1.0})`` returns a
:class:`rewards.base.MultiReward` whose output always holds ``avg``. Each name maps to ``"module:factory"`` and is
imported lazily, so a reward whose optional extra is not installed costs nothing until it is asked for.
``options`` maps a reward name to the keyword arguments of its factory.
"""
from __future__ import annotations

import importlib

from rewards.base import AsyncRewards, MultiReward, Reward, RewardError  # noqa: F401

REGISTRY: dict[str, str] = {
    "brightness": "rewards.simple:Brightness",
    "geneval": "rewards.geneval_models:GenEvalReward",
    "shapes_geneval": "worlds.shapes.reward:ShapesGenEvalReward",
    "ocr": "rewards.ocr:OCRReward",
    "pickscore": "rewards.pickscore:PickScoreReward",
    "clipscore": "rewards.clip_rewards:ClipScoreReward",
    "aesthetic": "rewards.aesthetic:AestheticReward",
    "hpsv2": "rewards.hpsv2:HPSv2Reward",
    "imagereward": "rewards.imagereward:ImageRewardReward",
    "jpeg_compressibility": "rewards.jpeg:JpegCompressibility",
    "jpeg_incompressibility": "rewards.jpeg:JpegIncompressibility",
    "unifiedreward": "rewards.unifiedreward:UnifiedReward",
    "remote": "rewards.server:RemoteReward",
}


def parse_reward_spec(spec: str | dict[str, float]) -> dict[str, float]:
    """``"a:0.5,b:0.5"`` or ``"a"`` or ``{"a": 1.0}`` -> ``{"a": 0.5, "b": 0.5}``; unknown names are an error."""
    if isinstance(spec, dict):
        weights = {str(k): float(v) for k, v in spec.items()}
    else:
        weights = {}
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            name, _, w = part.partition(":")
            try:
                weights[name.strip()] = float(w) if w else 1.0
            except ValueError:
                raise ValueError(f"reward spec {spec!r}: weight {w!r} of '{name}' is not a number") from None
    if not weights:
        raise ValueError(f"reward spec {spec!r} names no reward; choose from {sorted(REGISTRY)}")
    for name in weights:
        if name not in REGISTRY:
            raise ValueError(f"unknown reward '{name}' in {spec!r}; choose from {sorted(REGISTRY)}")
    return weights


def load_reward_class(name: str):
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def build_reward(spec: str | dict[str, float], options: dict[str, dict] | None = None) -> MultiReward:
    """Build the weighted multi-reward for ``spec``; ``options[name]`` are keyword arguments of that reward."""
    weights = parse_reward_spec(spec)
    options = options or {}
    components = {name: load_reward_class(name)(**options.get(name, {})) for name in weights}
    return MultiReward(components=components, weights=weights)
