"""Prompt sets and the grouped prompt sampler.

Prompt sets are GenEval metadata JSONL (one JSON object per line) or plain text files (one prompt per line; OCR
prompts must hold a double-quoted target). Malformed input raises :class:`PromptFileError` naming file and line.

:class:`GroupedSampler` gives K images per prompt, deterministic per ``(seed, epoch)``, sharded over ranks. Its
batch arithmetic is derived from the world size and checked with a message that says which numbers to change.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


class PromptFileError(ValueError):
    """A prompt file is missing, empty or malformed; the message names file and line."""


@dataclass
class PromptSet:
    """Prompts with one metadata dict each (``{}`` for plain-text sets)."""

    name: str
    prompts: list[str]
    metadata: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if not self.metadata:
            self.metadata = [{} for _ in self.prompts]
        if len(self.metadata) != len(self.prompts):
            raise ValueError(f"prompt set {self.name}: {len(self.prompts)} prompts but {len(self.metadata)} metadata")

    def __len__(self) -> int:
        return len(self.prompts)


def load_geneval_metadata(path: str | Path, name: str | None = None) -> PromptSet:
    path = Path(path)
    if not path.exists():
        raise PromptFileError(f"{path}: prompt file not found")
    prompts, metadata = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one GenEval "
                                  "metadata object") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or "include" not in item:
            raise PromptFileError(f"{path}:{lineno}: a GenEval metadata line needs a 'prompt' string and an "
                                  "'include' list")
        if item.get("tag") not in GENEVAL_TAGS:
            raise PromptFileError(f"{path}:{lineno}: tag {item.get('tag')!r} is not one of {GENEVAL_TAGS}")
        prompts.append(item["prompt"])
        metadata.append(item)
    if not prompts:
        raise PromptFileError(f"{path}: the file holds no prompts")
    return PromptSet(name or path.stem, prompts, metadata)


def quoted_target(prompt: str) -> str:
    """OCR target: the text between the first pair of double quotes."""
    parts = prompt.split('"')
    if len(parts) < 3:
        raise ValueError(f"OCR prompt has no double-quoted target text: {prompt!r}")
    if not parts[1].strip():
        raise ValueError(f"OCR prompt has an empty quoted target: {prompt!r}")
    return parts[1]


def load_text_prompts(path: str | Path, kind: Literal["plain", "ocr"] = "plain", name: str | None = None) -> PromptSet:
    path = Path(path)
    if not path.exists():
        raise PromptFileError(f"{path}: prompt file not found")
    prompts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if kind == "ocr":
            try:
                quoted_target(line)
            except ValueError as e:
                raise PromptFileError(f"{path}:{lineno}: {e}") from None
        prompts.append(line)
    if not prompts:
        raise PromptFileError(f"{path}: the file holds no prompts")
    return PromptSet(name or path.stem, prompts)


@dataclass
class GroupedSampler:
    """K images per prompt, ``prompts_per_epoch`` prompts per epoch, sharded over ``world_size`` ranks.

    An epoch's ``prompts_per_epoch * images_per_prompt`` samples are shuffled deterministically from
    ``(seed, epoch)`` and split into ``world_size`` equal shards; each rank's shard is cut into sampling batches of
    ``batch_size``. Groups span ranks and batches (advantages are computed over the gathered epoch), except with
    ``whole_groups`` (:meth:`batch_positions`).
    The sampler's only state is the epoch number, so resuming at epoch e reproduces it exactly.
    """

    num_prompts: int
    images_per_prompt: int
    prompts_per_epoch: int
    batch_size: int
    world_size: int = 1
    rank: int = 0
    seed: int = 0

    def __post_init__(self):
        per_epoch = self.prompts_per_epoch * self.images_per_prompt
        per_step = self.world_size * self.batch_size
        if self.prompts_per_epoch > self.num_prompts:
            raise ValueError(f"prompts_per_epoch={self.prompts_per_epoch} exceeds the {self.num_prompts} prompts of "
                             "the set; lower prompts_per_epoch")
        if per_epoch % per_step:
            raise ValueError(
                f"batch arithmetic: prompts_per_epoch x images_per_prompt = {self.prompts_per_epoch} x "
                f"{self.images_per_prompt} = {per_epoch} images per epoch must be divisible by world_size x "
                f"batch_size = {self.world_size} x {self.batch_size} = {per_step}; change prompts_per_epoch, "
                "images_per_prompt or the per-rank batch_size (or the number of GPUs)")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world_size {self.world_size}")

    @property
    def batches_per_epoch(self) -> int:
        return self.prompts_per_epoch * self.images_per_prompt // (self.world_size * self.batch_size)

    def epoch_samples(self, epoch: int, whole_groups: bool = False) -> list[int]:
        """All ranks' prompt indices for ``epoch`` in global order (each chosen prompt exactly K times): shuffled, or
        with ``whole_groups`` each prompt's K samples side by side (the same prompts, in their random order)."""
        return self._epoch(epoch, whole_groups)[0]

    def epoch_groups(self, epoch: int, whole_groups: bool = False) -> list[int]:
        """The group of every position of :meth:`epoch_samples`: which of the epoch's ``prompts_per_epoch`` prompt
        draws it belongs to (a prompt text may repeat in a set, so two groups can share one)."""
        return self._epoch(epoch, whole_groups)[1]

    def _epoch(self, epoch: int, whole_groups: bool) -> tuple[list[int], list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        chosen = torch.randperm(self.num_prompts, generator=g)[: self.prompts_per_epoch]
        group = torch.arange(self.prompts_per_epoch).repeat_interleave(self.images_per_prompt)
        if not whole_groups:
            group = group[torch.randperm(group.numel(), generator=g)]
        return chosen[group].tolist(), group.tolist()

    def batch_positions(self, whole_groups: bool = False) -> list[list[int]]:
        """Global positions (in :meth:`epoch_samples` order) of this rank's sampling batches.

        Default: rank r holds the r-th contiguous shard. ``whole_groups``: sampling step b (all ranks) is the b-th
        block of ``world_size x batch_size`` positions and rank r holds its r-th slice, so with groups side by side
        every step holds whole groups (split over ranks when ``batch_size < K``). Position p holds the same prompt
        whatever the number of ranks (positions key the rollout noise); with ``whole_groups`` the steps are also the
        same for the same ``world_size x batch_size``.
        """
        bs, n = self.batch_size, self.batches_per_epoch
        if not whole_groups:
            start = self.rank * n * bs
            return [list(range(start + b * bs, start + (b + 1) * bs)) for b in range(n)]
        step = self.world_size * bs
        if step % self.images_per_prompt:
            raise ValueError(f"whole prompt groups per sampling step: world_size x batch_size = {self.world_size} x "
                             f"{bs} = {step} must be a multiple of images_per_prompt = {self.images_per_prompt}; "
                             "change the per-rank rollout_batch_size or images_per_prompt (or the number of GPUs)")
        return [list(range(b * step + self.rank * bs, b * step + (self.rank + 1) * bs)) for b in range(n)]

    def batches(self, epoch: int, whole_groups: bool = False) -> list[list[int]]:
        """This rank's sampling batches (lists of prompt indices) for ``epoch``."""
        samples = self.epoch_samples(epoch, whole_groups)
        return [[samples[i] for i in pos] for pos in self.batch_positions(whole_groups)]
