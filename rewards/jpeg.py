"""JPEG (in)compressibility: the DDPO-style rewards that need no model.

The image is converted to uint8 exactly as the references do (:func:`rewards.base.to_uint8`), saved by PIL as a
JPEG at quality 95 (the references' setting), and its size is measured in kilobytes of 1000 bytes.

* ``jpeg_incompressibility`` = ``+kB``
* ``jpeg_compressibility``   = ``-kB`` (the spec's training scale, as in DDPO)

FlowGRPO's ``jpeg_compressibility`` additionally divides by 500 (``-kB / 500``); pass ``scale=1/500`` to get that.
"""
from __future__ import annotations

import io

import torch
from PIL import Image

from rewards.base import to_uint8

DEFAULT_QUALITY = 95


def jpeg_kilobytes(images: torch.Tensor, quality: int = DEFAULT_QUALITY) -> torch.Tensor:
    """Size in kB (1000 bytes) of each image of a float batch [B, 3, H, W] in [0, 1] saved as a PIL JPEG."""
    pixels = to_uint8(images).numpy()
    sizes = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32)


class _JpegSize:
    name = ""
    sign = 1.0

    def __init__(self, *, quality: int = DEFAULT_QUALITY, scale: float = 1.0):
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"{self.name}: quality must be in 1..100, got {quality}")
        self.quality = int(quality)
        self.scale = float(scale)

    def __call__(self, images: torch.Tensor, prompts, metadata) -> dict[str, torch.Tensor]:
        kb = jpeg_kilobytes(images, self.quality)
        return {self.name: self.sign * self.scale * kb, f"{self.name}_kb": kb}


class JpegCompressibility(_JpegSize):
    """``-kilobytes`` of the quality-95 JPEG: smaller files score higher. Options: ``quality``, ``scale``."""

    name = "jpeg_compressibility"
    sign = -1.0


class JpegIncompressibility(_JpegSize):
    """``+kilobytes`` of the quality-95 JPEG: larger (more detailed) files score higher. Options as above."""

    name = "jpeg_incompressibility"
    sign = 1.0
