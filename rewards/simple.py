"""Trivially learnable rewards for tests and smoke runs (no model)."""
from __future__ import annotations

import torch

from rewards.base import check_images


class Brightness:
    """Mean pixel value of the image in [0, 1]: a reward any working RL method raises within a few epochs."""

    name = "brightness"

    def __call__(self, images: torch.Tensor, prompts, metadata) -> dict[str, torch.Tensor]:
        check_images(images)
        return {self.name: images.detach().float().mean(dim=(1, 2, 3)).cpu()}
