"""The policy interface every model family implements, and the loading checks they share.

A family is a diffusers text-to-image pipeline with a flow-matching transformer. Samplers, methods and evaluation
see only :class:`FlowPolicy`:

- latents are always spatial ``[B, C, h, w]`` float tensors (``latent_shape``); a family that feeds its transformer
  tokens packs and unpacks them inside :meth:`FlowPolicy.velocity`;
- ``velocity(x, sigma, cond, guidance=...)`` is ``v ~ eps - x0`` whatever the family's own sign, timestep and
  packing conventions; ``guidance`` is always true classifier-free guidance (1 = one forward). A guidance-distilled
  transformer (FLUX.1-dev) gets :attr:`PolicyOptions.guidance_embed` through its guidance embedding instead;
- ``cond`` is a pair of tensors ``(embeds [B, L, D], aux [B, ...])`` of fixed shape per family, so rollout batches
  stack: SD3 and FLUX carry the pooled text embedding in ``aux``, Qwen-Image and Z-Image a 0/1 token mask;
- ``sigmas(num_steps, height, width)`` is the table the family's own pipeline would integrate (FLUX's
  resolution-dependent shift included); ``model_timestep`` turns the harness's ``sigma * 1000`` into what the
  transformer takes.

Each family lives in one module (SD3: :mod:`rollout.models`; the others: :mod:`rollout.families`) and overrides the
few hooks below; this base holds what they share (the per-prompt cache, CFG batching, loading, VAE decoding).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from rollout.schedule import sigmas_from_scheduler, to_timestep

TimestepMode = Literal["int", "float"]


class ModelLoadError(FileNotFoundError):
    """A model directory is missing or does not hold what was expected; the message names the path."""


@dataclass
class PolicyOptions:
    """How the policy runs (not what it is)."""

    max_sequence_length: int = 128
    """Text token length (SD3.5-M references: 128 T5 tokens in training, 256 in their standalone eval; 0 skips T5).
    Families pad every prompt's embedding to this length so rollout batches stack."""
    timestep_mode: TimestepMode = "int"
    """Transformer timestep at sampling: "int" truncates sigma*1000 like the references' rollout; "float" keeps it."""
    autocast_dtype: torch.dtype | None = None
    """fp16 autocast over fp32 weights on GPU (the references); None = pure fp32 (CPU)."""
    guidance_embed: float = 3.5
    """Guidance-distilled transformers only (FLUX.1-dev): the value fed to the guidance embedding at every forward
    (FluxPipeline's ``guidance_scale``, 3.5 by default and in FlowGRPO's FLUX configs). Ignored elsewhere."""


def check_model_dir(path: Path, layout: str, hub_example: str) -> None:
    """Refuse a directory that cannot be a saved ``layout`` pipeline, naming the path and what is missing."""
    if not path.exists():
        raise ModelLoadError(f"model path '{path}' does not exist; expected a directory written by "
                             f"{layout}.save_pretrained (model_index.json, transformer/, text_encoder/, ...) "
                             f"or a hub id such as '{hub_example}' on a machine with hub access")
    if not (path / "model_index.json").exists():
        raise ModelLoadError(f"model path '{path}' has no model_index.json; expected the {layout} "
                             "layout (model_index.json, transformer/, text_encoder/, tokenizer/, ...)")
    weights = list((path / "transformer").glob("*.safetensors")) + list((path / "transformer").glob("*.bin"))
    if not weights:
        raise ModelLoadError(f"model path '{path}/transformer' holds no weights (*.safetensors); the download or "
                             "save is incomplete")


def resolve_source(path_or_id: str | Path, layout: str, hub_example: str) -> str:
    """A checked local directory, or a hub id left for diffusers to resolve (it fails clearly offline)."""
    path = Path(path_or_id)
    if path.exists() or str(path_or_id).startswith((".", "/", "~")):
        check_model_dir(path.expanduser(), layout, hub_example)
        return str(path.expanduser())
    return str(path_or_id)


def absent_components(source: str, names: tuple[str, ...]) -> dict[str, None]:
    """Components saved as None (no VAE in pixel worlds, no T5) must be passed as None to ``from_pretrained``."""
    index = Path(source) / "model_index.json"
    if not index.exists():
        return {}
    saved = json.loads(index.read_text())
    return {k: None for k in names if saved.get(k, [None])[0] is None}


def check_tokenizers(pipe, source: str) -> None:
    """Offline loads can yield a useless tokenizer: refuse one with almost no tokens or no EOS / PAD."""
    for name in sorted(pipe.components):
        tok = getattr(pipe, name, None) if name.startswith("tokenizer") else None
        if tok is not None and (len(tok) < 4 or tok.eos_token_id is None or tok.pad_token_id is None):
            raise ModelLoadError(f"{source}/{name}: loaded a tokenizer with {len(tok)} tokens, eos "
                                 f"{tok.eos_token_id}, pad {tok.pad_token_id}; its files are missing or incomplete")


class FlowPolicy:
    """A flow-matching text-to-image model: ``velocity(x, sigma, cond)`` plus encode and decode."""

    family: ClassVar[str] = ""
    """Registry name (:mod:`rollout.families`)."""
    pipeline_class: ClassVar[type]
    """The diffusers pipeline this family saves and loads as."""
    hub_example: ClassVar[str] = ""
    """A hub id of the family, for error messages."""
    optional_components: ClassVar[tuple[str, ...]] = ()
    """Components a saved directory may hold as None."""
    lora_targets: ClassVar[tuple[str, ...]] = ()
    """The LoRA target-module suffixes of this family's presets."""
    cuda_dtype: ClassVar[torch.dtype] = torch.bfloat16
    """Autocast and text-encoder dtype on GPU at paper scale."""

    def __init__(self, pipe, options: PolicyOptions | None = None):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.vae = getattr(pipe, "vae", None)
        self.scheduler = pipe.scheduler
        self.options = options or self.default_options()
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for module in [*self.text_encoders, self.vae]:  # frozen in RL; eval() also turns dropout off
            if module is not None:
                module.eval().requires_grad_(False)

    @classmethod
    def default_options(cls) -> PolicyOptions:
        """How this family runs unless told otherwise (its pipeline's own conventions)."""
        return PolicyOptions()

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, options: PolicyOptions | None = None,
                        device: str | torch.device = "cpu", text_dtype: torch.dtype = torch.float32) -> "FlowPolicy":
        """Load a saved pipeline directory (or hub id); the transformer stays fp32 for training."""
        layout = cls.pipeline_class.__name__
        source = resolve_source(path_or_id, layout, cls.hub_example)
        absent = absent_components(source, cls.optional_components)
        try:
            pipe = cls.pipeline_class.from_pretrained(source, dtype=torch.float32, **absent)
        except OSError as e:
            raise ModelLoadError(f"could not load '{source}' as a {layout}: {e}") from e
        check_tokenizers(pipe, source)
        policy = cls(pipe, options)
        policy.to(device, text_dtype=text_dtype)
        return policy

    def save_pretrained(self, path: str | Path) -> None:
        self.pipe.save_pretrained(str(path), safe_serialization=True)

    def to(self, device, text_dtype: torch.dtype = torch.float32) -> "FlowPolicy":
        self.transformer.to(device)
        for enc in self.text_encoders:
            enc.to(device, dtype=text_dtype)
        if self.vae is not None:
            self.vae.to(device, dtype=torch.float32)
        self._cache.clear()
        return self

    # ----------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        names = sorted(n for n in self.pipe.components if n.startswith("text_encoder"))
        return [e for e in (getattr(self.pipe, n) for n in names) if e is not None]

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Shape [C, h, w] of the latent for an image of ``height x width`` pixels."""
        raise NotImplementedError

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        """The sigma table [num_steps + 1] (ending in 0) the family's pipeline integrates at this size."""
        return sigmas_from_scheduler(self.scheduler, num_steps)

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The transformer's timestep input from the harness's ``sigma * 1000`` (SD3 takes it as is)."""
        return t

    # ----------------------------------------------------------------- text
    def encode_uncached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embeds [B, L, D], aux [B, ...])`` through the family pipeline's own encoder code, with grad."""
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached per prompt: text encoders are frozen during RL. Float32 on the policy's device.

        A prompt missing from the cache is encoded alone (a batch of one), never together with the other missing
        prompts: a batched matrix product sums in an order that depends on the batch size, so a prompt's pooled
        embedding would depend on which prompts happened to be encoded with it (~5e-7 on the shapes model). Alone,
        its embedding is a function of the prompt only, so a run resumed with an empty cache sees the same numbers
        as the run that went straight through.
        """
        for prompt in dict.fromkeys(prompts):
            if prompt not in self._cache:
                embeds, aux = self.encode_uncached([prompt])
                self._cache[prompt] = (embeds[0].float(), aux[0].float())
        embeds = torch.stack([self._cache[p][0] for p in prompts])
        aux = torch.stack([self._cache[p][1] for p in prompts])
        return embeds, aux

    def clear_cache(self) -> None:
        self._cache.clear()

    # ----------------------------------------------------------------- velocity
    def _autocast(self):
        if self.options.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.options.autocast_dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        """One transformer call on spatial latents ``x`` at model timesteps ``t`` [B]: its raw output, spatial."""
        raise NotImplementedError

    def combine(self, v_u: torch.Tensor, v_c: torch.Tensor, guidance: float) -> torch.Tensor:
        """Classifier-free guidance from the unconditional and conditional velocities."""
        return v_u + guidance * (v_c - v_u)

    def to_velocity(self, out: torch.Tensor) -> torch.Tensor:
        """The transformer's output as ``v ~ eps - x0`` (float32); Z-Image predicts its negative."""
        return out.float()

    def velocity(self, x: torch.Tensor, sigma: float | torch.Tensor, cond: tuple[torch.Tensor, torch.Tensor],
                 guidance: float = 1.0, neg: tuple[torch.Tensor, torch.Tensor] | None = None,
                 integer_timestep: bool | None = None, detach_uncond: bool = False,
                 timestep: torch.Tensor | int | float | None = None) -> torch.Tensor:
        """Predicted velocity ``v ~ eps - x0`` at ``(x, sigma)``; float32 output.

        ``guidance > 1`` runs classifier-free guidance in ONE batched forward over ``[neg; cond]``
        (``v = v_u + g (v_c - v_u)``, or the family's own rule); ``neg`` defaults to the empty prompt's embedding.
        ``integer_timestep`` defaults to the options' ``timestep_mode`` (sampling); training passes False.
        ``detach_uncond`` stops gradients through the unconditional branch (a FlowGRPO reference variant).
        ``timestep`` (scalar or [B]) is used as given instead of ``sigma * 1000`` (DGPO: the DPM scheduler's
        integers; truncating ``float32(t) * 1000`` would turn 251 into 250), then through :meth:`model_timestep`.
        """
        if integer_timestep is None:
            integer_timestep = self.options.timestep_mode == "int"
        embeds, aux = cond
        b = x.shape[0]
        if guidance != 1.0:
            if neg is None:
                neg = tuple(t.expand(b, *t.shape[1:]) for t in self.encode([""]))
            x_in = torch.cat([x, x])
            embeds = torch.cat([neg[0], embeds])
            aux = torch.cat([neg[1], aux])
            sig = torch.cat([torch.as_tensor(sigma).reshape(-1).expand(b)] * 2) if torch.is_tensor(sigma) else sigma
        else:
            x_in, sig = x, sigma
        if timestep is None:
            t = to_timestep(sig, x_in.shape[0], x.device, integer_timestep)
        else:
            t = torch.as_tensor(timestep, device=x.device)
            t = t.expand(b) if t.ndim == 0 else t.reshape(-1)
            t = torch.cat([t, t]) if guidance != 1.0 else t
        with self._autocast():
            out = self.forward(x_in, self.model_timestep(t), embeds, aux)
        out = self.to_velocity(out)
        if guidance != 1.0:
            v_u, v_c = out.chunk(2)
            if detach_uncond:
                v_u = v_u.detach()
            return self.combine(v_u, v_c, guidance)
        return out

    # ----------------------------------------------------------------- images
    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Clean latent (or pixels in [-1, 1]) -> images float [B, 3, H, W] in [0, 1]."""
        if self.vae is None:
            img = x0.float()
        else:
            cfg = self.vae.config
            z = x0.float() / cfg.scaling_factor + (cfg.shift_factor or 0.0)
            img = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0].float()
        return (img / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> clean latents (pixel space: [-1, 1]); used by pretraining and tests."""
        x = images.float() * 2 - 1
        if self.vae is None:
            return x
        cfg = self.vae.config
        z = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mode().float()
        return (z - (cfg.shift_factor or 0.0)) * cfg.scaling_factor
