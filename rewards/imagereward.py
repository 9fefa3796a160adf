"""ImageReward v1.0 (optional extra ``imagereward``): a BLIP-based human-preference reward.

``imagereward`` = the model's z-scored reward (about -2 .. 2, reported raw), one (prompt, image) pair at a time on
the uint8 image, as the reference's ``inference_rank``/``score`` does. Needs the ``image-reward`` package
(``pip install 'flowrl-bench[imagereward]'``): constructing the reward checks it is installed (a clear ImportError
naming the extra otherwise); it is imported, and the model loaded, on the first call.
"""
from __future__ import annotations

import os
import sys
import threading

import torch

from rewards.base import check_images
from rewards.clip_rewards import resolve_device, resolve_dtype, uint8_to_pil

INSTALL_HINT = "pip install 'flowrl-bench[imagereward]'  (installs image-reward)"
IMAGEREWARD_REPO = "THUDM/ImageReward"
MISSING = f"the imagereward reward needs the image-reward package, which is not installed: {INSTALL_HINT}"


def require_imagereward() -> None:
    """Fail fast (at construction) with the extra to install when image-reward is not installed."""
    import importlib.util

    if "ImageReward" in sys.modules:
        ok = sys.modules["ImageReward"] is not None
    else:
        try:
            ok = importlib.util.find_spec("ImageReward") is not None
        except (ImportError, ValueError):
            ok = False
    if not ok:
        raise ImportError(MISSING)


def import_imagereward():
    try:
        import ImageReward  # type: ignore[import-not-found]
    except ImportError as e:
        raise ImportError(MISSING) from e
    return ImageReward


class ImageRewardReward:
    """``imagereward`` (raw).

    Options: ``model`` ("ImageReward-v1.0", or a path to ``ImageReward.pt``), ``download_root`` (folder holding
    ``ImageReward.pt`` and ``med_config.json``; default the package's cache), ``med_config`` (path, for a local
    checkpoint), ``device``, ``dtype``.
    """

    name = "imagereward"

    def __init__(
        self,
        *,
        model: str = "ImageReward-v1.0",
        download_root: str | None = None,
        med_config: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ):
        require_imagereward()
        self.model_name = str(model)
        self.download_root = download_root
        self.med_config = med_config
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._model is None:
                rm = import_imagereward()
                kwargs = {"device": str(self.device)}
                if self.download_root:
                    kwargs["download_root"] = os.path.expanduser(self.download_root)
                if self.med_config:
                    kwargs["med_config"] = os.path.expanduser(self.med_config)
                try:
                    model = rm.load(self.model_name, **kwargs)
                except Exception as e:  # noqa: BLE001 -- missing file / offline hub: explain
                    raise FileNotFoundError(
                        f"imagereward: cannot load model={self.model_name!r} ({type(e).__name__}: {e}). On a machine "
                        f"with internet run `huggingface-cli download {IMAGEREWARD_REPO} ImageReward.pt "
                        f"med_config.json --local-dir <folder>`, copy the folder here and pass "
                        f"model=<folder>/ImageReward.pt, med_config=<folder>/med_config.json "
                        f"(or download_root=<folder>)."
                    ) from e
                self._model = model.eval().requires_grad_(False).to(dtype=self.dtype)
        return self._model

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str], metadata) -> dict[str, torch.Tensor]:
        check_images(images)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"imagereward got {images.shape[0]} images and {len(prompts)} prompts")
        model = self._load()
        scores = [float(model.score(prompt, image)) for prompt, image in zip(prompts, uint8_to_pil(images))]
        return {self.name: torch.tensor(scores, dtype=torch.float32)}
