"""PickScore: a CLIP ViT-H/14 fine-tuned on Pick-a-Pic human preferences.

``pickscore = logit_scale.exp() * cos(text, image) / 26`` (training scale, about 0.8 - 0.95); papers report it x26
(e.g. 23.80). As in the reference, the image goes through the uint8 conversion and the CLIP processor of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (PIL bicubic resize of the shortest edge to 224, centre crop, normalise);
the model is ``yuvalkirstain/PickScore_v1``.
"""
from __future__ import annotations

import torch

from rewards.base import check_images
from rewards.clip_rewards import ClipEmbedder, uint8_to_pil

PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_DIVISOR = 26.0


class PickScoreReward:
    """``pickscore`` (training scale = reported / 26); also ``pickscore_x26`` (the reported scale).

    Options: ``model`` (default ``yuvalkirstain/PickScore_v1``), ``processor`` (default
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``), each a local folder or a hub id; ``device``, ``dtype``, ``batch_size``.
    """

    name = "pickscore"

    def __init__(
        self,
        *,
        model: str = PICKSCORE_MODEL,
        processor: str = PICKSCORE_PROCESSOR,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
    ):
        self.clip = ClipEmbedder(
            model, processor, device=device, dtype=dtype, batch_size=batch_size, reward=self.name
        )

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata) -> dict[str, torch.Tensor]:
        check_images(images)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"pickscore got {images.shape[0]} images and {len(prompts)} prompts")
        image_emb = self.clip.embed_pil(uint8_to_pil(images))
        text_emb = self.clip.embed_text(list(prompts))
        raw = self.clip.logit_scale.exp() * (image_emb * text_emb).sum(-1)
        return {self.name: raw / PICKSCORE_DIVISOR, "pickscore_x26": raw}
