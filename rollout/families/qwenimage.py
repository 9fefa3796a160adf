"""Qwen-Image: ``QwenImagePipeline`` with ``QwenImageTransformer2DModel`` and a Qwen2.5-VL text encoder.

Conventions, as ``QwenImagePipeline.__call__`` has them (diffusers 0.42):

- latents are the video VAE's (one frame; scale factor ``2 ** len(temperal_downsample)``), normalised by the VAE's
  per-channel ``latents_mean`` / ``latents_std``; the transformer takes 2 x 2 patches as tokens, with ``img_shapes``
  for its RoPE;
- a prompt is the hidden states of its chat template minus the 34-token system prefix, so every prompt has its own
  length: the harness pads to ``max_sequence_length`` with a mask and trims the common padding at each forward (the
  transformer masks padded text tokens out of attention);
- timestep input ``sigma``; sigma table ``linspace(1, 1/N, N)`` with the resolution-dependent ``mu``;
- true CFG (``true_cfg_scale``, a negative prompt; FlowGRPO: 4) with Qwen-Image's rescale: the guided prediction of
  each token is scaled back to the norm of the conditional one.
"""
from __future__ import annotations

import torch
from diffusers import QwenImagePipeline

from rollout.families.base import PolicyOptions
from rollout.families.flux import Packed2x2
from rollout.families.tokens import pack_2x2, pad_tokens, trim_padding, unpack_2x2
from rollout.lora import LoraOptions


class QwenImagePolicy(Packed2x2):
    """Qwen-Image. ``cond`` is ``(embeds [B, L, 3584] zero-padded, mask [B, L])``."""

    family = "qwen-image"
    pipeline_class = QwenImagePipeline
    hub_example = "Qwen/Qwen-Image"
    # the joint attention projections: Qwen-Image's blocks name them as SD3's do (no reference LoRA config known)
    lora_targets = tuple(LoraOptions().target_modules)

    @classmethod
    def default_options(cls) -> PolicyOptions:
        return PolicyOptions(max_sequence_length=512, timestep_mode="float")  # QwenImagePipeline's defaults

    @property
    def vae_scale(self) -> int:
        return 2 ** len(self.vae.temperal_downsample) if self.vae is not None else 8

    def encode_uncached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds [B, L, D], mask [B, L]) through ``QwenImagePipeline.encode_prompt``, padded to L, with grad."""
        length = self.options.max_sequence_length
        embeds, mask = self.pipe.encode_prompt(prompt=list(prompts), device=self.device, max_sequence_length=length)
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(embeds.shape[:2], device=embeds.device)
        return pad_tokens([e[m.bool()] for e, m in zip(embeds, mask)], length)

    def forward(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        embeds, mask = trim_padding(embeds, aux)
        out = self.transformer(hidden_states=pack_2x2(x), timestep=t, guidance=None,
                               encoder_hidden_states_mask=None if bool(mask.all()) else mask,
                               encoder_hidden_states=embeds, img_shapes=[[(1, h // 2, w // 2)]] * b,
                               return_dict=False)[0]
        return unpack_2x2(out, h, w)

    def combine(self, v_u: torch.Tensor, v_c: torch.Tensor, guidance: float) -> torch.Tensor:
        """``v_u + g (v_c - v_u)``, each token rescaled to the norm of its conditional prediction (the pipeline's rule,
        on the packed tokens)."""
        h, w = v_c.shape[-2:]
        u, c = pack_2x2(v_u), pack_2x2(v_c)
        guided = u + guidance * (c - u)
        guided = guided * (torch.norm(c, dim=-1, keepdim=True) / torch.norm(guided, dim=-1, keepdim=True))
        return unpack_2x2(guided, h, w)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, inv_std

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        z = x0.float()[:, :, None].to(self.vae.dtype)
        mean, inv_std = self._stats(z)
        img = self.vae.decode(z / inv_std + mean, return_dict=False)[0][:, :, 0].float()
        return (img / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() * 2 - 1)[:, :, None].to(self.vae.dtype)
        z = self.vae.encode(x).latent_dist.mode().float()
        mean, inv_std = self._stats(z)
        return ((z - mean) * inv_std)[:, :, 0]
