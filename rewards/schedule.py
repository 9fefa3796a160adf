"""Staged reward schedules: train on one prompt set and reward mix, then switch to the next.

A :class:`RewardSchedule` is a list of :class:`Stage` ``(epochs, prompt_set, weights)``. Epochs count from 0; stage
``i`` covers ``[start_i, start_i + epochs_i)`` with ``start_0 = 0``. Past the last stage the schedule holds the last
stage (``stage_at`` keeps returning it; ``finished(epoch)`` tells). Weights use the reward registry's names
(:mod:`rewards`), so ``build_reward(stage.weights)`` builds the stage's multi-reward.

DiffusionNFT's multi-reward run (SD3.5-M) is :data:`DIFFUSIONNFT_MULTI_REWARD`: 800 epochs of the Pick-a-Pic rewards
on Pick-a-Pic prompts, 300 of GenEval, 200 of Pick-a-Pic, 200 of GenEval, 100 of OCR (1600 epochs). The Pick-a-Pic
stage's mix is the reference config's ``sd3_multi_reward`` (PickScore, HPSv2.1 and CLIPScore, weight 1 each); the
GenEval and OCR stages use their single reward with weight 1, as the reference's single-reward configs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping


@dataclass(frozen=True)
class Stage:
    epochs: int
    prompt_set: str
    weights: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            raise ValueError(f"a stage lasts a positive whole number of epochs, got {self.epochs!r}")
        if not self.prompt_set or not isinstance(self.prompt_set, str):
            raise ValueError(f"a stage needs a prompt_set name, got {self.prompt_set!r}")
        if not self.weights:
            raise ValueError(f"stage on {self.prompt_set!r} has no reward weights")
        object.__setattr__(self, "weights", {str(k): float(v) for k, v in dict(self.weights).items()})

    @classmethod
    def from_dict(cls, item: Mapping) -> "Stage":
        unknown = set(item) - {"epochs", "prompt_set", "weights", "reward"}
        if unknown:
            raise ValueError(f"unknown stage fields {sorted(unknown)} in {dict(item)!r}")
        weights = item.get("weights", item.get("reward"))
        if isinstance(weights, str):
            from rewards import parse_reward_spec

            weights = parse_reward_spec(weights)
        try:
            return cls(epochs=item["epochs"], prompt_set=item["prompt_set"], weights=weights or {})
        except KeyError as e:
            raise ValueError(f"stage {dict(item)!r} lacks {e.args[0]!r}") from None

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "prompt_set": self.prompt_set, "weights": dict(self.weights)}


class RewardSchedule:
    def __init__(self, stages: Iterable[Stage | Mapping]):
        self.stages: list[Stage] = [s if isinstance(s, Stage) else Stage.from_dict(s) for s in stages]
        if not self.stages:
            raise ValueError("a reward schedule needs at least one stage")
        self.starts: list[int] = []
        total = 0
        for stage in self.stages:
            self.starts.append(total)
            total += stage.epochs
        self.total_epochs = total

    @classmethod
    def from_list(cls, items: Iterable[Mapping]) -> "RewardSchedule":
        return cls([Stage.from_dict(item) for item in items])

    def to_list(self) -> list[dict]:
        return [s.to_dict() for s in self.stages]

    def stage_at(self, epoch: int) -> tuple[int, Stage]:
        """``(index, stage)`` in force at 0-based ``epoch``; the last stage after the end."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        for index in range(len(self.stages) - 1, -1, -1):
            if epoch >= self.starts[index]:
                return index, self.stages[index]
        raise AssertionError("unreachable")  # starts[0] == 0

    def finished(self, epoch: int) -> bool:
        return epoch >= self.total_epochs

    def boundaries(self) -> list[int]:
        """First epoch of every stage after the first (where the reward / prompt set switches)."""
        return self.starts[1:]

    def reward_names(self) -> list[str]:
        names: list[str] = []
        for stage in self.stages:
            names += [n for n in stage.weights if n not in names]
        return names

    def __len__(self) -> int:
        return len(self.stages)

    def __repr__(self) -> str:
        return f"RewardSchedule({self.to_list()!r})"


PICKAPIC_REWARDS = {"pickscore": 1.0, "hpsv2": 1.0, "clipscore": 1.0}

DIFFUSIONNFT_MULTI_REWARD = RewardSchedule([
    Stage(800, "pickscore", PICKAPIC_REWARDS),
    Stage(300, "geneval", {"geneval": 1.0}),
    Stage(200, "pickscore", PICKAPIC_REWARDS),
    Stage(200, "geneval", {"geneval": 1.0}),
    Stage(100, "ocr", {"ocr": 1.0}),
])
