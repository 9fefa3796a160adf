"""A world: where a run's model, prompts and rewards come from (the shapes world, or paper scale)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rollout.families.base import FlowPolicy, PolicyOptions
from rollout.prompts import PromptSet


@dataclass
class World:
    """A run's model, prompt sets and reward names."""

    name: str
    """Short name, recorded with each run ("shapes", or the model folder's name)."""
    model: str
    """Path or hub id of the saved pipeline (any family of :mod:`rollout.families`)."""
    resolution: int
    """Image side in pixels."""
    eval_steps: int
    """Euler steps of the evaluation protocol."""
    policy_options: PolicyOptions
    """How the policy runs (text length, timestep mode, autocast)."""
    reward_aliases: dict[str, str] = field(default_factory=dict)
    """Reward names as the papers say them -> this world's implementation (shapes: geneval -> shapes_geneval)."""
    train_set: str = ""
    """Default training prompt set (a name :meth:`prompts` knows)."""
    test_set: str = ""
    """Default evaluation prompt set."""
    eval_spec: str = ""
    """Reward spec that scores evaluations (paper scale: the task's own reward, as the references evaluate OCR and
    PickScore runs); empty = GenEval with its accuracy outputs."""

    def load_policy(self, device: str | torch.device = "cpu") -> FlowPolicy:
        """The world's model as its family's policy; text encoders in float32 on CPU and in the shapes world, else in
        the family's GPU dtype (SD3: fp16)."""
        from rollout.families import load_policy

        text_dtype = torch.float32 if self.name == "shapes" or torch.device(device).type != "cuda" else None
        return load_policy(self.model, self.policy_options, device=device, text_dtype=text_dtype)

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
        """The reward used for evaluation: :attr:`eval_spec`, else GenEval with accuracy outputs on (not training
        mode)."""
        if self.eval_spec:
            from rewards import build_reward

            return build_reward(self.reward_spec(self.eval_spec))
        if self.name == "shapes":
            from worlds.shapes.reward import ShapesGenEvalReward

            return ShapesGenEvalReward(only_strict=False)
        from rewards.geneval_models import GenEvalReward

        return GenEvalReward(only_strict=False)
