"""Worlds: where a run's model, prompts and rewards come from.

- ``shapes`` (default): the built-in CPU-scale GenEval testbed (:mod:`worlds.shapes`), its committed base model,
  its shipped prompt files and its detector-based GenEval reward.
- anything else: a path or hub id of an SD3 pipeline (paper scale, e.g. SD3.5-Medium) with the references' prompt
  sets (:mod:`rollout.datasets`) and the papers' rewards (:mod:`rewards`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from rollout.models import PolicyOptions, T2IPolicy
from rollout.prompts import PromptSet


@dataclass
class World:
    name: str
    model: str
    resolution: int
    eval_steps: int
    policy_options: PolicyOptions
    reward_aliases: dict[str, str] = field(default_factory=dict)
    """Reward names as the papers say them -> this world's implementation (shapes: geneval -> shapes_geneval)."""
    train_set: str = ""
    test_set: str = ""

    def load_policy(self, device: str | torch.device = "cpu") -> T2IPolicy:
        text_dtype = torch.float16 if torch.device(device).type == "cuda" and self.name != "shapes" else torch.float32
        return T2IPolicy.from_pretrained(self.model, self.policy_options, device=device, text_dtype=text_dtype)

    def reward_spec(self, spec: str) -> str:
        """Translate paper reward names in ``spec`` ("geneval:1,jpeg_compressibility:0.1") to this world's."""
        from rewards import parse_reward_spec

        names = {self.reward_aliases.get(k, k): w for k, w in parse_reward_spec(spec).items()}
        return ",".join(f"{k}:{w}" for k, w in names.items())

    def prompts(self, which: str) -> PromptSet:
        """A prompt set by name (shapes: \"train\" / \"test\"; paper scale: rollout.datasets names) or a file of
        one's own: ``*.jsonl`` in GenEval's metadata format, or ``*.txt`` with one prompt per line."""
        if which.endswith((".jsonl", ".txt")):
            from rollout.prompts import load_geneval_metadata, load_text_prompts

            return load_geneval_metadata(which) if which.endswith(".jsonl") else load_text_prompts(which)
        if self.name == "shapes":
            from worlds.shapes.world import load_prompts

            return load_prompts(which)
        from rollout.datasets import load_prompt_set

        return load_prompt_set(which)

    def test_prompts(self) -> PromptSet:
        return self.prompts(self.test_set)

    def eval_reward(self):
        """The reward used for evaluation (GenEval: accuracy outputs on, i.e. not training mode)."""
        if self.name == "shapes":
            from worlds.shapes.reward import ShapesGenEvalReward

            return ShapesGenEvalReward(only_strict=False)
        from rewards.geneval_models import GenEvalReward

        return GenEvalReward(only_strict=False)


def load_world(name: str, task: str = "geneval") -> World:
    if name == "shapes":
        from worlds.shapes.world import SHAPES

        return SHAPES
    sets = {"geneval": ("geneval_train", "geneval_test"), "ocr": ("ocr_train", "ocr_test"),
            "pickscore": ("pickscore_train", "pickscore_test"), "hpsv2": ("pickscore_train", "drawbench_test"),
            "multi_reward": ("pickscore_train", "drawbench_test")}
    if task not in sets:
        raise ValueError(f"unknown task {task!r} for a paper-scale world; choose from {sorted(sets)}")
    train, test = sets[task]
    opts = PolicyOptions(max_sequence_length=128, timestep_mode="int",
                         autocast_dtype=torch.float16 if torch.cuda.is_available() else None)
    return World(name=Path(name).name, model=name, resolution=512, eval_steps=40, policy_options=opts,
                 train_set=train, test_set=test)
