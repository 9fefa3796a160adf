"""The ``shapes_geneval`` reward: GenEval's scoring rules on the shapes world's classical detector.

Same interface and outputs as the paper-scale GenEval reward, so methods train on it unchanged: the training value
is the partial-credit ``score``; ``strict_accuracy`` and (in evaluation) the official ``accuracy`` come alongside.
No JPEG round trip (FlowGRPO's reward server receives JPEGs): at 32 x 32 JPEG would smear the hard edges that make
this detector exact.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from rewards.base import to_uint8
from rewards.geneval import score_detections
from worlds.shapes.detector import detect


class ShapesGenEvalReward:
    """Score ``[B, 3, H, W]`` images in [0, 1] against GenEval metadata of shapes-world prompts.

    ``only_strict=True`` (training, as the reference server is called) skips the official accuracy and leaves the
    ``accuracy`` key out (logging it as 0 would read as a measurement); evaluate with ``only_strict=False``.
    ``fixed_position=True`` scores positions without the reference's quirk (see
    :func:`rewards.geneval.strict_and_score`). ``max_workers > 1`` scores images in a thread pool.
    """

    name = "shapes_geneval"

    def __init__(self, only_strict: bool = True, fixed_position: bool = False, max_workers: int = 1):
        self.only_strict = only_strict
        self.fixed_position = fixed_position
        self.max_workers = max_workers

    def _score_one(self, image: np.ndarray, metadata: dict) -> dict[str, float]:
        return score_detections(metadata, detect(image), self.only_strict, self.fixed_position)

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> dict[str, torch.Tensor]:
        pixels = to_uint8(images).numpy()
        if not len(prompts) == len(metadata) == len(pixels):
            raise ValueError(f"{self.name}: {len(pixels)} images, {len(prompts)} prompts, {len(metadata)} metadata")
        if self.max_workers > 1:
            with ThreadPoolExecutor(self.max_workers) as pool:
                results = list(pool.map(self._score_one, pixels, metadata))
        else:
            results = [self._score_one(image, meta) for image, meta in zip(pixels, metadata)]

        def column(key: str) -> torch.Tensor:
            return torch.tensor([r[key] for r in results], dtype=torch.float32)

        out = {self.name: column("score"), "strict_accuracy": column("strict_accuracy")}
        if not self.only_strict:
            out["accuracy"] = column("accuracy")
        return out
