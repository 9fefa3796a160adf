"""Model families: which policy class a saved pipeline directory (or hub id) loads as.

``load_policy(path)`` reads ``model_index.json`` (its ``_class_name``: the diffusers pipeline) and builds that
family's policy; every family implements :class:`rollout.families.base.FlowPolicy`. SD3 (``rollout.models``) is the
default. Modules are imported only when their family is used.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from rollout.families.base import FlowPolicy, ModelLoadError, PolicyOptions

FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # family: (module, policy class, diffusers pipeline classes it loads)
    "sd3": ("rollout.models", "T2IPolicy", ("StableDiffusion3Pipeline",)),
    "flux": ("rollout.families.flux", "FluxPolicy", ("FluxPipeline",)),
    "flux2-klein": ("rollout.families.flux2", "Flux2KleinPolicy", ("Flux2KleinPipeline",)),
    "qwen-image": ("rollout.families.qwenimage", "QwenImagePolicy", ("QwenImagePipeline",)),
    "z-image": ("rollout.families.zimage", "ZImagePolicy", ("ZImagePipeline",)),
}
HUB_IDS = {
    # the published checkpoints, so presets resolve before anything is downloaded
    "stabilityai/stable-diffusion-3.5-medium": "sd3", "stabilityai/stable-diffusion-3.5-large": "sd3",
    "stabilityai/stable-diffusion-3-medium-diffusers": "sd3",
    "black-forest-labs/FLUX.1-dev": "flux", "black-forest-labs/FLUX.1-schnell": "flux",
    "black-forest-labs/FLUX.2-klein-4B": "flux2-klein", "black-forest-labs/FLUX.2-klein-base-4B": "flux2-klein",
    "black-forest-labs/FLUX.2-klein-9B": "flux2-klein", "black-forest-labs/FLUX.2-klein-base-9B": "flux2-klein",
    "Qwen/Qwen-Image": "qwen-image", "Tongyi-MAI/Z-Image-Turbo": "z-image", "Tongyi-MAI/Z-Image": "z-image",
}


def policy_class(family: str) -> type[FlowPolicy]:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    module, name, _ = FAMILIES[family]
    return getattr(importlib.import_module(module), name)


def family_of_pipeline(class_name: str, where: str) -> str:
    """The family whose pipeline is ``class_name`` (read from ``where``); a clear error for any other."""
    for family, (_, _, pipelines) in FAMILIES.items():
        if class_name in pipelines:
            return family
    known = ", ".join(f"{p} ({f})" for f, (_, _, ps) in FAMILIES.items() for p in ps)
    raise ModelLoadError(f"{where}: _class_name {class_name!r} is not a known model family; known pipelines: {known}")


def detect_family(path_or_id: str | Path) -> str | None:
    """The family of a local pipeline directory (from its ``model_index.json``) or of a known hub id; None when
    neither tells (a directory without ``model_index.json``, an unknown hub id: loading then says what is wrong)."""
    index = Path(path_or_id).expanduser() / "model_index.json"
    if index.is_file():
        try:
            name = json.loads(index.read_text()).get("_class_name")
        except json.JSONDecodeError as err:
            raise ModelLoadError(f"{index}: not valid JSON ({err}); the save is incomplete") from None
        return family_of_pipeline(str(name), str(index))
    return HUB_IDS.get(str(path_or_id))


def is_distilled(path_or_id: str | Path) -> bool:
    """Whether a saved pipeline says it is step-distilled (FLUX.2 klein's ``is_distilled``, in model_index.json)."""
    index = Path(path_or_id).expanduser() / "model_index.json"
    return index.is_file() and bool(json.loads(index.read_text()).get("is_distilled", False))


def _hub_family(hub_id: str) -> str | None:
    """The family of a hub id from its ``model_index.json`` (the hub cache offline); None when it cannot be read."""
    if Path(hub_id).exists() or hub_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import hf_hub_download

        index = hf_hub_download(hub_id, "model_index.json")
    except Exception:  # offline, unknown id, no hub: loading as SD3 then fails with diffusers' own message
        return None
    return detect_family(Path(index).parent)


def load_policy(path_or_id: str | Path, options: PolicyOptions | None = None, device: str | torch.device = "cpu",
                text_dtype: torch.dtype | None = None) -> FlowPolicy:
    """The policy of a saved pipeline directory or hub id, as its family (SD3 when nothing says otherwise: a hub id
    that is not in :data:`HUB_IDS` is loaded as SD3, as before families existed). ``text_dtype`` None: float32 on
    CPU, the family's ``cuda_dtype`` on GPU."""
    cls = policy_class(detect_family(path_or_id) or _hub_family(str(path_or_id)) or "sd3")
    if text_dtype is None:
        text_dtype = cls.cuda_dtype if torch.device(device).type == "cuda" else torch.float32
    return cls.from_pretrained(path_or_id, options, device=device, text_dtype=text_dtype)
