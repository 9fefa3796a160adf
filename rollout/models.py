"""The text-to-image policy: diffusers' ``SD3Transformer2DModel`` with its text encoders and (optionally) a VAE.

One class serves every scale. Paper scale is Stable Diffusion 3.5 Medium, loaded from a local directory written by
``save_pretrained`` or from a hub id when a hub is reachable (``StableDiffusion3Pipeline`` layout). Tests build the
same layout at tiny size from configs (:func:`build_tiny_sd3`), and the built-in shapes world is a pixel-space model
of that layout with no VAE and no T5.

Prompt encoding goes through diffusers' own ``StableDiffusion3Pipeline.encode_prompt`` (CLIP-L + CLIP-G penultimate
states, padded and joined with T5) and is cached per prompt: text encoders are frozen during RL. Each prompt is
encoded alone, so its embedding never depends on the other prompts of a batch (what makes resuming exact).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from rollout.schedule import to_timestep
from rollout.text import build_word_tokenizer

TimestepMode = Literal["int", "float"]


class ModelLoadError(FileNotFoundError):
    """A model directory is missing or does not hold what was expected; the message names the path."""


def _check_model_dir(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"model path '{path}' does not exist; expected a directory written by "
                             "StableDiffusion3Pipeline.save_pretrained (model_index.json, transformer/, text_encoder/, ...) "
                             "or a hub id such as 'stabilityai/stable-diffusion-3.5-medium' on a machine with hub access")
    if not (path / "model_index.json").exists():
        raise ModelLoadError(f"model path '{path}' has no model_index.json; expected the StableDiffusion3Pipeline "
                             "layout (model_index.json, transformer/, text_encoder/, tokenizer/, ...)")
    weights = list((path / "transformer").glob("*.safetensors")) + list((path / "transformer").glob("*.bin"))
    if not weights:
        raise ModelLoadError(f"model path '{path}/transformer' holds no weights (*.safetensors); the download or "
                             "save is incomplete")


@dataclass
class PolicyOptions:
    """How the policy runs (not what it is)."""

    max_sequence_length: int = 128
    """T5 token length (SD3.5-M references: 128 in training, 256 in their standalone eval). 0 skips T5 tokens."""
    timestep_mode: TimestepMode = "int"
    """Transformer timestep at sampling: "int" truncates sigma*1000 like the references' rollout; "float" keeps it."""
    autocast_dtype: torch.dtype | None = None
    """fp16 autocast over fp32 weights on GPU (the references); None = pure fp32 (CPU)."""


class T2IPolicy:
    """A flow-matching text-to-image model: ``velocity(x, sigma, cond)`` plus encode and decode."""

    def __init__(self, pipe: StableDiffusion3Pipeline, options: PolicyOptions | None = None):
        self.pipe = pipe
        self.transformer: SD3Transformer2DModel = pipe.transformer
        self.vae: AutoencoderKL | None = pipe.vae
        self.scheduler = pipe.scheduler
        self.options = options or PolicyOptions()
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for module in [*self.text_encoders, self.vae]:  # frozen in RL; eval() also turns T5's dropout off
            if module is not None:
                module.eval().requires_grad_(False)

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, options: PolicyOptions | None = None,
                        device: str | torch.device = "cpu", text_dtype: torch.dtype = torch.float32) -> "T2IPolicy":
        """Load a ``StableDiffusion3Pipeline`` directory (or hub id); the transformer stays fp32 for training."""
        path = Path(path_or_id)
        if path.exists() or str(path_or_id).startswith((".", "/", "~")):
            _check_model_dir(path.expanduser())
            source = str(path.expanduser())
        else:
            source = str(path_or_id)  # a hub id: diffusers resolves it (fails clearly offline)
        absent = {}
        index = Path(source) / "model_index.json"
        if index.exists():  # components saved as None (no VAE in pixel worlds, no T5) must be passed as None
            saved = json.loads(index.read_text())
            absent = {k: None for k in ("vae", "text_encoder_3", "tokenizer_3") if saved.get(k, [None])[0] is None}
        try:
            pipe = StableDiffusion3Pipeline.from_pretrained(source, dtype=torch.float32, **absent)
        except OSError as e:
            raise ModelLoadError(f"could not load '{source}' as an SD3 pipeline: {e}") from e
        for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):  # offline loads can yield a useless tokenizer
            tok = getattr(pipe, name, None)
            if tok is not None and (len(tok) < 4 or tok.eos_token_id is None or tok.pad_token_id is None):
                raise ModelLoadError(f"{source}/{name}: loaded a tokenizer with {len(tok)} tokens, eos "
                                     f"{tok.eos_token_id}, pad {tok.pad_token_id}; its files are missing or incomplete")
        policy = cls(pipe, options)
        policy.to(device, text_dtype=text_dtype)
        return policy

    def save_pretrained(self, path: str | Path) -> None:
        self.pipe.save_pretrained(str(path), safe_serialization=True)

    def to(self, device, text_dtype: torch.dtype = torch.float32) -> "T2IPolicy":
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
        return [e for e in (self.pipe.text_encoder, self.pipe.text_encoder_2, self.pipe.text_encoder_3) if e is not None]

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Shape [C, h, w] of the latent for an image of ``height x width`` pixels."""
        c = self.transformer.config.in_channels
        if self.vae is None:
            return (c, height, width)
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (c, height // f, width // f)

    # ----------------------------------------------------------------- text
    def encode_uncached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds [B, L, D], pooled [B, P]) through the SD3 pipeline's own encoder code, with grad."""
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=self.options.max_sequence_length,
        )
        return embeds, pooled

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
                embeds, pooled = self.encode_uncached([prompt])
                self._cache[prompt] = (embeds[0].float(), pooled[0].float())
        embeds = torch.stack([self._cache[p][0] for p in prompts])
        pooled = torch.stack([self._cache[p][1] for p in prompts])
        return embeds, pooled

    def clear_cache(self) -> None:
        self._cache.clear()

    # ----------------------------------------------------------------- velocity
    def _autocast(self):
        if self.options.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.options.autocast_dtype)

    def velocity(self, x: torch.Tensor, sigma: float | torch.Tensor, cond: tuple[torch.Tensor, torch.Tensor],
                 guidance: float = 1.0, neg: tuple[torch.Tensor, torch.Tensor] | None = None,
                 integer_timestep: bool | None = None, detach_uncond: bool = False,
                 timestep: torch.Tensor | int | float | None = None) -> torch.Tensor:
        """Predicted velocity ``v ~ eps - x0`` at ``(x, sigma)``; float32 output.

        ``guidance > 1`` runs classifier-free guidance in ONE batched forward over ``[neg; cond]``
        (``v = v_u + g (v_c - v_u)``); ``neg`` defaults to the empty prompt's embedding.
        ``integer_timestep`` defaults to the options' ``timestep_mode`` (sampling); training passes False.
        ``detach_uncond`` stops gradients through the unconditional branch (a FlowGRPO reference variant).
        ``timestep`` (scalar or [B]) is fed to the transformer as given instead of ``sigma * 1000`` (DGPO: the DPM
        scheduler's integers; truncating ``float32(t) * 1000`` would turn 251 into 250).
        """
        if integer_timestep is None:
            integer_timestep = self.options.timestep_mode == "int"
        embeds, pooled = cond
        b = x.shape[0]
        if guidance != 1.0:
            if neg is None:
                neg_e, neg_p = self.encode([""])
                neg = (neg_e.expand(b, -1, -1), neg_p.expand(b, -1))
            x_in = torch.cat([x, x])
            embeds = torch.cat([neg[0], embeds])
            pooled = torch.cat([neg[1], pooled])
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
            out = self.transformer(hidden_states=x_in, encoder_hidden_states=embeds, pooled_projections=pooled,
                                   timestep=t, return_dict=False)[0]
        out = out.float()
        if guidance != 1.0:
            v_u, v_c = out.chunk(2)
            if detach_uncond:
                v_u = v_u.detach()
            return v_u + guidance * (v_c - v_u)
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


# --------------------------------------------------------------------- tiny builders
def tiny_clip(vocab_size: int, eos_token_id: int, hidden: int = 32, proj: int = 32, layers: int = 2,
              max_len: int = 16, pad_token_id: int = 0, bos_token_id: int = 2) -> CLIPTextModelWithProjection:
    """A tiny CLIP text encoder. ``eos_token_id`` MUST be the tokenizer's real EOS id: with the default 2,
    transformers pools at the highest token id (a legacy path) and silently reads the wrong position."""
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 4,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 32) * 2, projection_dim=proj,
                         max_position_embeddings=max_len, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         bos_token_id=bos_token_id, hidden_act="gelu")
    return CLIPTextModelWithProjection(cfg)


def build_tiny_sd3(words: list[str], *, sample_size: int = 32, patch_size: int = 2, layers: int = 2,
                   heads: int = 2, head_dim: int = 16, clip_hidden: int = 32, with_t5: bool = True,
                   with_vae: bool = True, max_len: int = 16, shift: float = 3.0, seed: int = 0) -> StableDiffusion3Pipeline:
    """An SD3-layout pipeline at tiny size, buildable offline: two tiny CLIP encoders (+ optional tiny T5), a
    word-level tokenizer for each, optional tiny VAE (16 latent channels, like SD3.5), random weights."""
    torch.manual_seed(seed)
    tok = build_word_tokenizer(words, max_length=max_len)
    eos, pad, bos = tok.eos_token_id, tok.pad_token_id, tok.bos_token_id
    te1 = tiny_clip(len(tok), eos, clip_hidden, clip_hidden, 2, max_len, pad, bos)
    te2 = tiny_clip(len(tok), eos, clip_hidden, clip_hidden, 2, max_len, pad, bos)
    joint_dim = 2 * clip_hidden
    te3 = tok3 = None
    if with_t5:
        t5cfg = T5Config(vocab_size=len(tok), d_model=joint_dim, d_kv=16, d_ff=joint_dim * 2, num_layers=1,
                         num_heads=2, dropout_rate=0.0, pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad)
        te3, tok3 = T5EncoderModel(t5cfg), build_word_tokenizer(words, max_length=max_len)
    vae = None
    in_channels = 3
    if with_vae:
        vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            latent_channels=16, norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False,
                            shift_factor=0.0609, scaling_factor=1.5035, sample_size=sample_size)
        in_channels = 16
        sample_size = sample_size // 2
    transformer = SD3Transformer2DModel(
        sample_size=sample_size, patch_size=patch_size, in_channels=in_channels, out_channels=in_channels,
        num_layers=layers, attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=joint_dim,
        caption_projection_dim=heads * head_dim, pooled_projection_dim=2 * clip_hidden,
        pos_embed_max_size=max(sample_size // patch_size, 8))
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=vae,
        text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=build_word_tokenizer(words, max_len),
        text_encoder_3=te3, tokenizer_3=tok3)
