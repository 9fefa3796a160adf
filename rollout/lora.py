"""LoRA adapters on the transformer, with peft: the trainable policy, the sampling policy and the reference.

Two adapters live on one model (as in the references):

- ``"default"``: the trainable policy ``theta``;
- ``"old"``: the sampling policy (DiffusionNFT's ``theta_old``, soft-updated toward ``theta``);
- the *reference* policy is the base model: the same model with adapters disabled.

peft snags handled here, in one place: ``set_adapter`` makes only the active adapter trainable, and diffusers'
``disable_adapters()``/``enable_adapters()`` change ``requires_grad`` too. Every switch below therefore restores
"exactly the ``default`` adapter's LoRA weights are trainable" on exit.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import torch
from peft import LoraConfig

TRAINABLE = "default"
OLD = "old"


@dataclass
class LoraOptions:
    """LoRA hyperparameters (defaults: the references on SD3.5-Medium)."""

    rank: int = 32
    """LoRA rank r."""
    alpha: int = 64
    """LoRA alpha (scale alpha / r)."""
    init: str = "gaussian"
    """peft ``init_lora_weights``: "gaussian" draws A ~ N(0, 1/r) and sets B = 0, so every adapter starts at the
    base."""
    target_modules: list[str] = field(default_factory=lambda: [
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
        "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    ])
    """Module-name suffixes to adapt. SD3.5-M's ``attn2`` layers do not match ``.attn.`` and stay un-adapted."""


def adapter_params(model: torch.nn.Module, name: str) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters of adapter ``name``, keyed by their name with the adapter name removed."""
    out = {}
    for key, p in model.named_parameters():
        for part in (f".lora_A.{name}.", f".lora_B.{name}."):
            if part in key:
                out[key.replace(f".{name}.", ".")] = p
    return out


def _restore_trainable(model: torch.nn.Module) -> None:
    for key, p in model.named_parameters():
        p.requires_grad_(f".lora_A.{TRAINABLE}." in key or f".lora_B.{TRAINABLE}." in key)


def add_lora(model: torch.nn.Module, options: LoraOptions | None = None, seed: int | None = None) -> None:
    """Add the ``default`` and ``old`` adapters; ``old`` starts as an exact copy of ``default``."""
    options = options or LoraOptions()
    cfg = LoraConfig(r=options.rank, lora_alpha=options.alpha, init_lora_weights=options.init,
                     target_modules=list(options.target_modules))
    if seed is not None:
        torch.manual_seed(seed)
    model.add_adapter(cfg, adapter_name=TRAINABLE)
    with warnings.catch_warnings():  # two adapters on one model is the design, not a mistake peft should warn about
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        model.add_adapter(cfg, adapter_name=OLD)
    copy_adapter(model, TRAINABLE, OLD)
    model.set_adapter(TRAINABLE)
    _restore_trainable(model)
    if not adapter_params(model, TRAINABLE):
        raise ValueError(f"LoRA targets {options.target_modules} matched no module of {type(model).__name__}")


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return list(adapter_params(model, TRAINABLE).values())


@contextlib.contextmanager
def use_adapter(model: torch.nn.Module, name: str):
    """Run the model with adapter ``name`` active; ``default`` stays the (only) trainable adapter."""
    model.set_adapter(name)
    try:
        yield model
    finally:
        model.set_adapter(TRAINABLE)
        _restore_trainable(model)


@contextlib.contextmanager
def reference(model: torch.nn.Module):
    """Run the base model (all adapters disabled): the KL reference of both methods."""
    model.disable_adapters()
    try:
        yield model
    finally:
        model.enable_adapters()
        model.set_adapter(TRAINABLE)
        _restore_trainable(model)


@torch.no_grad()
def copy_adapter(model: torch.nn.Module, src: str, dst: str) -> None:
    s, d = adapter_params(model, src), adapter_params(model, dst)
    for k, p in d.items():
        p.copy_(s[k])


@torch.no_grad()
def soft_update(model: torch.nn.Module, decay: float, dst: str = OLD, src: str = TRAINABLE) -> None:
    """``dst <- decay * dst + (1 - decay) * src`` on every LoRA weight (DiffusionNFT's old-policy update)."""
    s, d = adapter_params(model, src), adapter_params(model, dst)
    for k, p in d.items():
        p.mul_(decay).add_(s[k], alpha=1 - decay)


class EMA:
    """Exponential moving average of the trainable adapter, swapped in for evaluation and checkpoints only."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.shadow = {k: p.detach().clone().float() for k, p in adapter_params(model, TRAINABLE).items()}

    @torch.no_grad()
    def update(self, decay: float) -> None:
        """``ema <- decay * ema + (1 - decay) * theta``."""
        for k, p in adapter_params(self.model, TRAINABLE).items():
            self.shadow[k].mul_(decay).add_(p.detach().float(), alpha=1 - decay)

    @contextlib.contextmanager
    def swapped_in(self):
        """Temporarily load the EMA weights into the trainable adapter; the live weights come back on exit."""
        params = adapter_params(self.model, TRAINABLE)
        live = {k: p.detach().clone() for k, p in params.items()}
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(self.shadow[k])
        try:
            yield self.model
        finally:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(live[k])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise KeyError(f"EMA state does not match the adapter: {sorted(missing)[:4]} ...")
        self.shadow = {k: v.clone().float() for k, v in state.items()}


def ema_decay(s: int, cap: float = 0.9) -> float:
    """The references' EMA decay ``min((1 + s) / (10 + s), cap)`` at optimizer step ``s`` (cap 0.9: NFT and FlowGRPO;
    AWM passes 0.99)."""
    return min((1 + s) / (10 + s), cap)
