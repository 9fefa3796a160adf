"""The reward interface shared by every reward, method and the reward server.

A reward is any callable

    fn(images: FloatTensor[B, 3, H, W] in [0, 1], prompts: list[str], metadata: list[dict]) -> dict[str, Tensor[B]]

returning per-image scores on the *training* scale. A single reward returns at least one key named after itself
(extra diagnostic keys are allowed). :class:`MultiReward` combines named components with weights and adds
``avg = sum_i w_i * reward_i`` -- the value every method trains on.

:class:`AsyncRewards` runs a reward in a thread pool so that sampling of the next batch continues while the current
one is scored (the references do the same). A reward that raises fails the batch with the reward's name in the
error: it never silently scores 0.
"""
from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch


class RewardError(RuntimeError):
    """A reward failed; the message names the reward."""


class Reward(Protocol):
    name: str

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> dict[str, torch.Tensor]:
        ...


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float [B,3,H,W] in [0,1] -> uint8 [B,H,W,3], exactly as the references: (x * 255).round().clamp(0, 255)."""
    check_images(images)
    return (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"rewards take images as a float tensor [B, 3, H, W] in [0, 1]; got {shape}")


@dataclass
class MultiReward:
    """Weighted sum of named rewards. ``components`` maps name -> reward callable, ``weights`` name -> weight."""

    components: dict[str, Callable]
    weights: dict[str, float]
    name: str = field(default="avg")

    def __post_init__(self):
        missing = set(self.weights) ^ set(self.components)
        if missing:
            raise ValueError(f"reward weights and components differ in {sorted(missing)}")

    def __call__(self, images, prompts, metadata) -> dict[str, torch.Tensor]:
        check_images(images)
        if not (len(prompts) == len(metadata) == images.shape[0]):
            raise ValueError(f"reward got {images.shape[0]} images, {len(prompts)} prompts, {len(metadata)} metadata")
        out: dict[str, torch.Tensor] = {}
        avg = torch.zeros(images.shape[0], dtype=torch.float64)
        for name, fn in self.components.items():
            try:
                scores = fn(images, prompts, metadata)
            except Exception as e:  # noqa: BLE001 -- re-raised with the reward's name
                raise RewardError(f"reward '{name}' failed: {type(e).__name__}: {e}") from e
            if name not in scores:
                raise RewardError(f"reward '{name}' returned keys {sorted(scores)} without '{name}'")
            for k, v in scores.items():
                key = k if k == name else f"{name}/{k}" if not k.startswith(name) else k
                out[key] = torch.as_tensor(v).detach().cpu().reshape(images.shape[0]).to(torch.float64)
            avg += self.weights[name] * out[name]
        out["avg"] = avg
        return out


class AsyncRewards:
    """Score batches in a thread pool while the caller keeps sampling.

    ``submit`` returns a future; ``result(future)`` re-raises a failure as :class:`RewardError` naming the reward.
    """

    def __init__(self, reward: Callable, max_workers: int = 2):
        self.reward = reward
        self.pool = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="reward")

    def submit(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> cf.Future:
        return self.pool.submit(self.reward, images.detach().cpu(), list(prompts), list(metadata))

    def result(self, future: cf.Future) -> dict[str, torch.Tensor]:
        try:
            return future.result()
        except RewardError:
            raise
        except Exception as e:  # noqa: BLE001
            name = getattr(self.reward, "name", type(self.reward).__name__)
            raise RewardError(f"reward '{name}' failed: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        self.pool.shutdown(wait=True)
