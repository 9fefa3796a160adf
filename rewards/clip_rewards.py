"""CLIP loading and embedding shared by the CLIP-based rewards, and the ``clipscore`` reward.

:class:`ClipEmbedder` loads a transformers ``CLIPModel`` and its processor lazily (first call), once, thread-safely,
from a local folder or a hub id, and embeds

* text: tokenised by the processor's tokenizer (truncated to the model's 77 positions);
* images given as PIL images through the processor (what PickScore and the aesthetic predictor do on the uint8
  images), or
* images given as the float tensor [B, 3, H, W] in [0, 1], preprocessed in torch (what clipscore and hpsv2 do):
  resize (shortest edge, or both edges) with antialiasing, centre crop, normalise with the processor's mean/std.

Every embedding is L2-normalised and returned in float32 on the CPU.

The helpers :func:`resolve_device`, :func:`resolve_dtype` and :func:`load_or_explain` are shared by every reward that
loads weights: a missing model gives an error that names the option and says how to get the weights.
"""
from __future__ import annotations

import os
import threading
from typing import Callable

import torch
import torch.nn.functional as F

from rewards.base import check_images

CLIP_L14 = "openai/clip-vit-large-patch14"

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> cuda if available else cpu."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``None`` -> float32; accepts a torch dtype or a name such as "float16", "bf16"."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(_DTYPES)}")
    return _DTYPES[key]


def download_hint(option: str, value: str, reward: str, what: str = "the weights") -> str:
    """How to obtain weights that are not here: the command to run on a machine with internet, then the option."""
    value = str(value)
    looks_local = value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1 or os.path.exists(value)
    if looks_local:
        return (
            f"{reward}: cannot find {what} at {option}={value!r}. Pass {option}=<a local folder holding them> "
            f"(e.g. made with `huggingface-cli download <hub id> --local-dir <folder>` on a machine with internet)."
        )
    return (
        f"{reward}: cannot load {what} {option}={value!r} (not a local folder, and the hub is unreachable or "
        f"offline). On a machine with internet run `huggingface-cli download {value} --local-dir <folder>`, copy "
        f"the folder here and pass {option}=<folder> (or let the hub cache it with HF_HUB_OFFLINE unset)."
    )


def load_or_explain(loader: Callable, value: str, *, option: str, reward: str, what: str = "the weights", **kwargs):
    """``loader(value, **kwargs)``, turning a missing-file / unreachable-hub error into one that names ``option``."""
    try:
        return loader(value, **kwargs)
    except (OSError, ValueError) as e:  # transformers raises OSError (or ValueError) for missing / offline models
        raise FileNotFoundError(f"{download_hint(option, value, reward, what)} [{type(e).__name__}: {e}]") from e


def _features(output) -> torch.Tensor:
    """Projected CLIP features from ``get_*_features`` (a tensor in transformers 4, a model output in 5)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"unexpected CLIP feature output {type(output).__name__}")
    return pooled


def _size_of(value, default: int) -> tuple[str, object]:
    """Processor size dict -> ("shortest_edge", n) or ("hw", (h, w))."""
    if value is None:
        return "shortest_edge", default
    if isinstance(value, int):
        return "shortest_edge", value
    if isinstance(value, dict) or hasattr(value, "get"):
        if value.get("shortest_edge"):
            return "shortest_edge", int(value["shortest_edge"])
        if value.get("height") and value.get("width"):
            return "hw", (int(value["height"]), int(value["width"]))
    raise ValueError(f"unsupported processor size {value!r}")


def resize_tensor(images: torch.Tensor, size, interpolation: str = "bilinear") -> torch.Tensor:
    """torchvision-style resize of a float batch: ``size`` an int (shortest edge, long edge ``int(size*long/short)``)
    or ``(h, w)``; antialiased bilinear/bicubic, ``align_corners=False``."""
    h, w = images.shape[-2:]
    if isinstance(size, int):
        short, long = (h, w) if h <= w else (w, h)
        new_short, new_long = size, int(size * long / short)
        out_h, out_w = (new_short, new_long) if h <= w else (new_long, new_short)
    else:
        out_h, out_w = int(size[0]), int(size[1])
    if (out_h, out_w) == (h, w):
        return images
    return F.interpolate(images, size=(out_h, out_w), mode=interpolation, align_corners=False, antialias=True)


def center_crop_tensor(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision-style centre crop (offsets ``round((H - h) / 2)``); pads with 0 if the image is smaller."""
    ch, cw = size
    h, w = images.shape[-2:]
    if h < ch or w < cw:
        pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
        images = F.pad(images, [pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2])
        h, w = images.shape[-2:]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return images[..., top : top + ch, left : left + cw]


class ClipEmbedder:
    """Lazily loaded CLIP model + processor. ``model`` / ``processor``: local folder or hub id (``processor``
    defaults to ``model``). ``reward`` and the option names only shape error messages."""

    def __init__(
        self,
        model: str = CLIP_L14,
        processor: str | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
        reward: str = "clip",
        model_option: str = "model",
        processor_option: str = "processor",
    ):
        self.model_path = str(model)
        self.processor_path = str(processor) if processor else str(model)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.batch_size = int(batch_size)
        self.reward = reward
        self.model_option = model_option
        self.processor_option = processor_option if processor else model_option
        self._model = None
        self._processor = None
        self._lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------------------------------
    def load(self) -> "ClipEmbedder":
        with self._lock:
            if self._model is None:
                from transformers import CLIPModel, CLIPProcessor

                processor = load_or_explain(
                    CLIPProcessor.from_pretrained, self.processor_path,
                    option=self.processor_option, reward=self.reward, what="the CLIP processor",
                )
                model = load_or_explain(
                    CLIPModel.from_pretrained, self.model_path,
                    option=self.model_option, reward=self.reward, what="the CLIP model",
                )
                self._processor = processor
                self._model = model.eval().requires_grad_(False).to(self.device, dtype=self.dtype)
        return self

    @property
    def model(self):
        return self.load()._model

    @property
    def processor(self):
        return self.load()._processor

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().float().cpu()

    # -- embeddings ------------------------------------------------------------------------------------------------
    def _chunks(self, n: int):
        step = max(self.batch_size, 1)
        return [(i, min(i + step, n)) for i in range(0, n, step)]

    @torch.no_grad()
    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        model, tokenizer = self.model, self.processor.tokenizer
        max_length = int(getattr(model.config.text_config, "max_position_embeddings", 77))
        out = []
        for a, b in self._chunks(len(prompts)):
            tokens = tokenizer(
                list(prompts[a:b]), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            tokens = {k: v.to(self.device) for k, v in tokens.items()}
            out.append(_features(model.get_text_features(**tokens)).float())
        return F.normalize(torch.cat(out), dim=-1).cpu()

    @torch.no_grad()
    def embed_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Embed already preprocessed pixel values [B, 3, S, S]."""
        model = self.model
        out = []
        for a, b in self._chunks(pixel_values.shape[0]):
            pixels = pixel_values[a:b].to(self.device, dtype=self.dtype)
            out.append(_features(model.get_image_features(pixel_values=pixels)).float())
        return F.normalize(torch.cat(out), dim=-1).cpu()

    def preprocess_pil(self, images: list) -> torch.Tensor:
        """PIL images -> pixel values through the processor (resize, crop, rescale, normalise)."""
        return self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def embed_pil(self, images: list) -> torch.Tensor:
        return self.embed_pixels(self.preprocess_pil(images))

    def preprocess_float(
        self, images: torch.Tensor, interpolation: str = "bilinear", resize: str = "shortest_edge"
    ) -> torch.Tensor:
        """Float [B, 3, H, W] in [0, 1] -> pixel values, in torch.

        ``resize="shortest_edge"``: the processor's resize (shortest edge) then centre crop, as a torchvision
        ``Compose([Resize(size), CenterCrop(crop), Normalize(mean, std)])`` built from the processor (clipscore);
        ``resize="squash"``: resize both edges straight to the crop size (hpsv2's preprocessing).
        """
        check_images(images)
        ip = self.processor.image_processor
        crop_kind, crop = _size_of(getattr(ip, "crop_size", None), 224)
        crop_hw = crop if crop_kind == "hw" else (crop, crop)
        x = images.detach().to(self.device, torch.float32)
        if resize == "squash":
            x = resize_tensor(x, crop_hw, interpolation)
        elif resize == "shortest_edge":
            if getattr(ip, "do_resize", True):
                kind, size = _size_of(getattr(ip, "size", None), crop_hw[0])
                x = resize_tensor(x, size, interpolation)
            if getattr(ip, "do_center_crop", True):
                x = center_crop_tensor(x, crop_hw)
        else:
            raise ValueError(f"resize must be 'shortest_edge' or 'squash', got {resize!r}")
        if getattr(ip, "do_normalize", True):
            mean = torch.tensor(ip.image_mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(ip.image_std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x

    @torch.no_grad()
    def embed_float(self, images: torch.Tensor, interpolation: str = "bilinear", resize: str = "shortest_edge"):
        return self.embed_pixels(self.preprocess_float(images, interpolation=interpolation, resize=resize))


def uint8_to_pil(images: torch.Tensor) -> list:
    """Float [B, 3, H, W] in [0, 1] -> PIL RGB images via the references' uint8 conversion."""
    from PIL import Image

    from rewards.base import to_uint8

    return [Image.fromarray(a) for a in to_uint8(images).numpy()]


class ClipScoreReward:
    """``clipscore`` = cosine(text embedding, image embedding) of CLIP ViT-L/14 (raw, about 0.24 - 0.30).

    The image is the float tensor, preprocessed in torch as the reference's torchvision transform does (antialiased
    bilinear resize of the shortest edge to 224, centre crop 224, CLIP normalisation). FlowGRPO's variant reports
    ``logits / 30`` = ``100 * cos / 30``; pass ``scale=100/30`` for that.

    Options: ``model`` (folder or hub id, default ``openai/clip-vit-large-patch14``), ``processor`` (default: same as
    ``model``), ``device``, ``dtype``, ``batch_size``, ``interpolation`` ("bilinear" | "bicubic"), ``scale``.
    """

    name = "clipscore"

    def __init__(
        self,
        *,
        model: str = CLIP_L14,
        processor: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 32,
        interpolation: str = "bilinear",
        scale: float = 1.0,
    ):
        self.clip = ClipEmbedder(
            model, processor, device=device, dtype=dtype, batch_size=batch_size, reward=self.name
        )
        self.interpolation = interpolation
        self.scale = float(scale)

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata) -> dict[str, torch.Tensor]:
        check_images(images)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"clipscore got {images.shape[0]} images and {len(prompts)} prompts")
        image_emb = self.clip.embed_float(images, interpolation=self.interpolation)
        text_emb = self.clip.embed_text(list(prompts))
        return {self.name: self.scale * (image_emb * text_emb).sum(-1)}


def save_tiny_clip(path: str, *, image_size: int = 32, projection_dim: int = 16, seed: int = 0) -> str:
    """Save a randomly initialised tiny CLIP (model + processor with a byte-level tokenizer) to ``path``.

    For tests and CPU smoke runs of the CLIP-based rewards without the real weights. Returns ``path``.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab: dict[str, int] = {}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for suffix in ("", "</w>"):
        for ch in alphabet:
            vocab[ch + suffix] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    try:
        tokenizer = CLIPTokenizer(vocab=vocab, merges=[])  # transformers 5: tokenizers-backed, built from a dict
    except TypeError:  # transformers 4: built from files
        import json

        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "vocab.json"), "w") as f:
            json.dump(vocab, f)
        with open(os.path.join(path, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n")
        tokenizer = CLIPTokenizer(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"))
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            image_size=image_size, patch_size=8,
        ),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path
