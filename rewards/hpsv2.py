"""HPSv2.1: Human Preference Score v2.1, an open_clip ViT-H/14 fine-tuned on HPD v2 (optional extra ``hpsv2``).

``hpsv2`` = cosine(image features, text features) of the HPSv2.1 model (raw, about 0.20 - 0.38; reported raw).
As in DiffusionNFT's scorer the float image tensor is resized straight to 224 x 224 (bicubic, antialiased) and
normalised with the OpenAI CLIP mean/std, in torch; the prompt goes through the open_clip ViT-H-14 tokenizer.

Needs ``open_clip`` (``pip install 'flowrl-bench[hpsv2]'``, i.e. open-clip-torch), or the ``hpsv2`` package's
vendored copy (``hpsv2.src.open_clip``). Constructing the reward only checks that one is installed (a clear
ImportError naming the extra otherwise); it is imported, and the model loaded, on the first call. The weights are the
single file ``HPS_v2.1_compressed.pt`` (the whole model's state dict), from the hub repo ``xswu/HPSv2``.
"""
from __future__ import annotations

import os
import sys
import threading

import torch
import torch.nn.functional as F

from rewards.base import check_images
from rewards.clip_rewards import resize_tensor, resolve_device, resolve_dtype

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
INSTALL_HINT = "pip install 'flowrl-bench[hpsv2]'  (installs open-clip-torch)"


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    import importlib.util

    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_open_clip() -> None:
    """Fail fast (at construction) with the extra to install when neither open_clip nor hpsv2 is installed."""
    if not (_installed("open_clip") or _installed("hpsv2")):
        raise ImportError(f"the hpsv2 reward needs open_clip, which is not installed: {INSTALL_HINT}")


def import_open_clip():
    """``open_clip`` from open-clip-torch, else the ``hpsv2`` package's vendored copy; ImportError if neither."""
    try:
        import open_clip

        return open_clip
    except ImportError:
        pass
    try:
        from hpsv2.src import open_clip  # type: ignore[import-not-found]

        return open_clip
    except ImportError:
        pass
    raise ImportError(f"the hpsv2 reward needs open_clip, which is not installed: {INSTALL_HINT}")


def hps_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Float [B, 3, H, W] in [0, 1] -> normalised [B, 3, size, size] (bicubic squash resize, CLIP mean/std)."""
    check_images(images)
    x = resize_tensor(images.detach().float(), (size, size), "bicubic")
    mean = torch.tensor(OPENAI_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class HPSv2Reward:
    """``hpsv2`` (raw cosine).

    Options: ``checkpoint`` (path to ``HPS_v2.1_compressed.pt``; default: fetched from the hub repo ``xswu/HPSv2``
    through the local cache), ``version`` ("v2.1" | "v2.0"), ``device``, ``dtype``, ``batch_size``.
    """

    name = "hpsv2"

    def __init__(
        self,
        *,
        checkpoint: str | None = None,
        version: str = "v2.1",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
    ):
        if version not in HPS_FILES:
            raise ValueError(f"hpsv2: version must be one of {sorted(HPS_FILES)}, got {version!r}")
        require_open_clip()
        self.checkpoint = checkpoint
        self.version = version
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.batch_size = int(batch_size)
        self._model = None
        self._tokenizer = None
        self._lock = threading.Lock()

    def _checkpoint_path(self) -> str:
        filename = HPS_FILES[self.version]
        how = (
            f"On a machine with internet run `huggingface-cli download {HPS_REPO} {filename} --local-dir <folder>`, "
            f"copy the file here and pass checkpoint=<folder>/{filename}."
        )
        if self.checkpoint:
            path = os.path.expanduser(str(self.checkpoint))
            if not os.path.isfile(path):
                raise FileNotFoundError(f"hpsv2: no checkpoint at checkpoint={self.checkpoint!r}. {how}")
            return path
        try:
            from huggingface_hub import hf_hub_download

            return hf_hub_download(HPS_REPO, filename)
        except Exception as e:  # noqa: BLE001 -- offline / missing: explain how to get it
            raise FileNotFoundError(f"hpsv2: cannot fetch {HPS_REPO}/{filename} (checkpoint=None). {how}") from e

    def _load(self):
        with self._lock:
            if self._model is None:
                open_clip = import_open_clip()
                path = self._checkpoint_path()
                model = open_clip.create_model("ViT-H-14", pretrained=None)
                state = torch.load(path, map_location="cpu", weights_only=True)
                model.load_state_dict(state.get("state_dict", state))
                self._tokenizer = open_clip.get_tokenizer("ViT-H-14")
                self._model = model.eval().requires_grad_(False).to(self.device, dtype=self.dtype)
        return self._model, self._tokenizer

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str], metadata) -> dict[str, torch.Tensor]:
        check_images(images)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"hpsv2 got {images.shape[0]} images and {len(prompts)} prompts")
        model, tokenizer = self._load()
        scores = []
        for a in range(0, images.shape[0], max(self.batch_size, 1)):
            b = min(a + self.batch_size, images.shape[0])
            pixels = hps_preprocess(images[a:b].to(self.device)).to(self.dtype)
            text = tokenizer(list(prompts[a:b])).to(self.device)
            image_features = F.normalize(model.encode_image(pixels).float(), dim=-1)
            text_features = F.normalize(model.encode_text(text).float(), dim=-1)
            scores.append((image_features * text_features).sum(-1).cpu())
        return {self.name: torch.cat(scores)}
