"""LAION aesthetic predictor v2: an MLP on the L2-normalised CLIP ViT-L/14 image embedding (score about 1 - 10).

The MLP is ``768 -> 1024 -> 128 -> 64 -> 16 -> 1`` with dropouts between the first layers (inactive at eval, so the
weights sit at ``layers.0``, ``layers.2``, ``layers.4``, ``layers.6`` and ``layers.7``), weights
``sac+logos+ava1-l14-linearMSE.pth`` from christophschuhmann/improved-aesthetic-predictor. As in the reference the
image goes through the uint8 conversion and the CLIP processor.
"""
from __future__ import annotations

import os
import threading

import torch
import torch.nn as nn

from rewards.base import check_images
from rewards.clip_rewards import CLIP_L14, ClipEmbedder, uint8_to_pil

AESTHETIC_WEIGHTS = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth"
)
_LINEARS = (0, 2, 4, 6, 7)  # indices of the Linear layers in the reference nn.Sequential
_DROPOUTS = {1: 0.2, 3: 0.2, 5: 0.1}


class AestheticMLP(nn.Module):
    """The predictor's ``layers`` Sequential; ``sizes`` = (768, 1024, 128, 64, 16, 1) for the released weights."""

    def __init__(self, sizes: tuple[int, ...] = (768, 1024, 128, 64, 16, 1)):
        super().__init__()
        if len(sizes) != 6:
            raise ValueError(f"the aesthetic MLP has 5 linear layers (6 sizes), got sizes {sizes}")
        modules: list[nn.Module] = []
        linear = iter(zip(sizes[:-1], sizes[1:]))
        for index in range(8):
            if index in _DROPOUTS:
                modules.append(nn.Dropout(_DROPOUTS[index]))
            else:
                modules.append(nn.Linear(*next(linear)))
        self.layers = nn.Sequential(*modules)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding)

    @classmethod
    def from_state_dict(cls, state: dict) -> "AestheticMLP":
        keys = [f"layers.{i}.weight" for i in _LINEARS]
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"not an aesthetic-predictor state dict: missing {missing}; has {sorted(state)[:10]}")
        sizes = [state[keys[0]].shape[1]] + [state[k].shape[0] for k in keys]
        mlp = cls(tuple(int(s) for s in sizes))
        mlp.load_state_dict(state)
        return mlp


class AestheticReward:
    """``aesthetic`` (raw, about 1 - 10).

    Options: ``weights`` (path to ``sac+logos+ava1-l14-linearMSE.pth``, required), ``clip_model`` (folder or hub
    id, default ``openai/clip-vit-large-patch14``; its processor too unless ``clip_processor`` is given), ``device``,
    ``dtype``, ``batch_size``.
    """

    name = "aesthetic"

    def __init__(
        self,
        *,
        weights: str | None = None,
        clip_model: str = CLIP_L14,
        clip_processor: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
    ):
        self.weights = weights
        self.clip = ClipEmbedder(
            clip_model, clip_processor, device=device, dtype=dtype, batch_size=batch_size, reward=self.name,
            model_option="clip_model", processor_option="clip_processor",
        )
        self._mlp: AestheticMLP | None = None
        self._lock = threading.Lock()

    def _load_mlp(self) -> AestheticMLP:
        with self._lock:
            if self._mlp is None:
                if not self.weights or not os.path.isfile(os.path.expanduser(str(self.weights))):
                    raise FileNotFoundError(
                        f"aesthetic: MLP weights not found at weights={self.weights!r}. Download {AESTHETIC_WEIGHTS} "
                        f"on a machine with internet (e.g. `wget '{AESTHETIC_URL}'`), copy it here and pass "
                        f"weights=<path to {AESTHETIC_WEIGHTS}>."
                    )
                state = torch.load(os.path.expanduser(str(self.weights)), map_location="cpu", weights_only=True)
                mlp = AestheticMLP.from_state_dict(state).eval().requires_grad_(False)
                self._mlp = mlp.to(self.clip.device)
        return self._mlp

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts, metadata) -> dict[str, torch.Tensor]:
        check_images(images)
        mlp = self._load_mlp()
        embedding = self.clip.embed_pil(uint8_to_pil(images))  # L2-normalised, float32
        in_features = mlp.layers[0].in_features
        if embedding.shape[-1] != in_features:
            raise ValueError(
                f"aesthetic: the MLP takes {in_features}-d embeddings but clip_model={self.clip.model_path!r} gives "
                f"{embedding.shape[-1]}-d ones (the released MLP needs CLIP ViT-L/14)"
            )
        return {self.name: mlp(embedding.to(self.clip.device)).squeeze(-1).float().cpu()}
