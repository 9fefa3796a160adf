"""The text-to-image policy: diffusers' ``SD3Transformer2DModel`` with its text encoders and (optionally) a VAE.

One class serves every scale. Paper scale is Stable Diffusion 3.5 Medium, loaded from a local directory written by
``save_pretrained`` or from a hub id when a hub is reachable (``StableDiffusion3Pipeline`` layout). Tests build the
same layout at tiny size from configs (:func:`build_tiny_sd3`), and the built-in shapes world is a pixel-space model
of that layout with no VAE and no T5.

Prompt encoding goes through diffusers' own ``StableDiffusion3Pipeline.encode_prompt`` (CLIP-L + CLIP-G penultimate
states, padded and joined with T5) and is cached per prompt: text encoders are frozen during RL. Each prompt is
encoded alone, so its embedding never depends on the other prompts of a batch (what makes resuming exact).

SD3 is the default family; the interface it implements (:class:`rollout.families.base.FlowPolicy`) is what samplers,
methods and evaluation use, and the other families (FLUX.1, FLUX.2 klein, Qwen-Image, Z-Image) live in
:mod:`rollout.families`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from rollout.families.base import FlowPolicy, ModelLoadError, PolicyOptions, TimestepMode, check_model_dir
from rollout.lora import LoraOptions
from rollout.schedule import to_timestep  # noqa: F401  (importable from here, as before the families)
from rollout.text import build_word_tokenizer

__all__ = ["ModelLoadError", "PolicyOptions", "T2IPolicy", "TimestepMode", "build_tiny_sd3", "tiny_clip"]


def _check_model_dir(path: Path) -> None:
    check_model_dir(path, "StableDiffusion3Pipeline", T2IPolicy.hub_example)


class T2IPolicy(FlowPolicy):
    """Stable Diffusion 3 / 3.5 (Medium, Large): ``velocity(x, sigma, cond)`` plus encode and decode; the default
    family. ``cond`` is ``(prompt_embeds [B, L, D], pooled [B, P])``; the transformer takes ``sigma * 1000``."""

    family = "sd3"
    pipeline_class = StableDiffusion3Pipeline
    hub_example = "stabilityai/stable-diffusion-3.5-medium"
    optional_components = ("vae", "text_encoder_3", "tokenizer_3")
    lora_targets = tuple(LoraOptions().target_modules)
    cuda_dtype = torch.float16

    def __init__(self, pipe: StableDiffusion3Pipeline, options: PolicyOptions | None = None):
        super().__init__(pipe, options)
        self.transformer: SD3Transformer2DModel = pipe.transformer
        self.vae: AutoencoderKL | None = pipe.vae

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, options: PolicyOptions | None = None,
                        device: str | torch.device = "cpu", text_dtype: torch.dtype = torch.float32) -> "T2IPolicy":
        """Load a ``StableDiffusion3Pipeline`` directory (or hub id); the transformer stays fp32 for training."""
        return super().from_pretrained(path_or_id, options, device, text_dtype)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Shape [C, h, w] of the latent for an image of ``height x width`` pixels."""
        c = self.transformer.config.in_channels
        if self.vae is None:
            return (c, height, width)
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (c, height // f, width // f)

    def encode_uncached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds [B, L, D], pooled [B, P]) through the SD3 pipeline's own encoder code, with grad."""
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=self.options.max_sequence_length,
        )
        return embeds, pooled

    def forward(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        return self.transformer(hidden_states=x, encoder_hidden_states=embeds, pooled_projections=aux,
                                timestep=t, return_dict=False)[0]


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
                   with_vae: bool = True, max_len: int = 16, shift: float = 3.0,
                   seed: int = 0) -> StableDiffusion3Pipeline:
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
