"""FLUX.2 klein: ``Flux2KleinPipeline`` with ``Flux2Transformer2DModel`` and a Qwen3 text encoder.

Conventions, as ``Flux2KleinPipeline.__call__`` has them (diffusers 0.42):

- the state the pipeline integrates is the VAE latent patchified 2 x 2 (``4 x 32 = 128`` channels at half the
  latent side) and normalised by the VAE's batch-norm statistics; the harness keeps that tensor spatially and feeds
  the transformer one token per position, with 4-axis position ids (0, row, col, 0) and text ids (0, 0, 0, k);
- a prompt is hidden layers 9, 18 and 27 of Qwen3 over its chat template, padded to ``max_sequence_length`` (no
  mask: the transformer attends to the padding too, as in the pipeline);
- timestep input ``sigma``; sigma table ``linspace(1, 1/N, N)`` shifted by ``compute_empirical_mu`` (a function of
  the image tokens and of N);
- no guidance embedding: the base models run true CFG (``v_u + g (v_c - v_u)``, default 4), the step-distilled
  ones (``is_distilled``) none (``g = 1``).
"""
from __future__ import annotations

import numpy as np
import torch
from diffusers import Flux2KleinPipeline
from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

from rollout.families.base import FlowPolicy, PolicyOptions
from rollout.schedule import pipeline_sigmas


def position_ids(t: int, h: int, w: int, n: int, device) -> torch.Tensor:
    """FLUX.2's 4-axis ids ``[t h w n, 4]`` (time, row, col, sequence), row-major."""
    axes = [torch.arange(k, device=device) for k in (t, h, w, n)]
    return torch.cartesian_prod(*axes)


class Flux2KleinPolicy(FlowPolicy):
    """FLUX.2 klein (4B / 9B, distilled or base). ``cond`` is ``(embeds [B, L, 3 x hidden], empty [B, 0])``."""

    family = "flux2-klein"
    pipeline_class = Flux2KleinPipeline
    hub_example = "black-forest-labs/FLUX.2-klein-4B"
    # joint attention of the double blocks and the fused QKV + MLP input of the single blocks (no reference LoRA
    # config known; the single blocks' ``attn.to_out`` shares its suffix with the double blocks' ModuleList)
    lora_targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                    "attn.add_v_proj", "attn.to_add_out", "attn.to_qkv_mlp_proj")
    text_encoder_out_layers = (9, 18, 27)
    """Qwen3 hidden layers stacked into a prompt embedding (the pipeline's default)."""

    @classmethod
    def default_options(cls) -> PolicyOptions:
        return PolicyOptions(max_sequence_length=512, timestep_mode="float")  # Flux2KleinPipeline's defaults

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        s = self.vae_scale * 2
        return (self.transformer.config.in_channels, height // s, width // s)

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        _, h, w = self.latent_shape(height, width)
        mu = compute_empirical_mu(image_seq_len=h * w, num_steps=num_steps)
        return pipeline_sigmas(self.scheduler, np.linspace(1.0, 1 / num_steps, num_steps), mu)

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t / 1000

    def encode_uncached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds [B, L, D], an empty [B, 0]) through ``Flux2KleinPipeline.encode_prompt``, with grad."""
        embeds, _ = self.pipe.encode_prompt(prompt=list(prompts), device=self.device,
                                            max_sequence_length=self.options.max_sequence_length,
                                            text_encoder_out_layers=self.text_encoder_out_layers)
        return embeds, embeds.new_zeros(len(prompts), 0)

    def forward(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.reshape(b, c, h * w).permute(0, 2, 1)
        img_ids = position_ids(1, h, w, 1, x.device).expand(b, -1, -1)
        txt_ids = position_ids(1, 1, 1, embeds.shape[1], x.device).expand(b, -1, -1)
        out = self.transformer(hidden_states=tokens, timestep=t, guidance=None, encoder_hidden_states=embeds,
                               txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return out.permute(0, 2, 1).reshape(b, c, h, w)

    def _bn(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(like.device, like.dtype)
        return mean, std

    def to_vae_latents(self, x0: torch.Tensor) -> torch.Tensor:
        """The pipeline's ``output_type="latent"``: batch-norm statistics undone, patches back to pixels of the VAE
        latent ``[B, C/4, 2h, 2w]``."""
        mean, std = self._bn(x0)
        z = x0 * std + mean
        b, c, h, w = z.shape
        return z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, h * 2, w * 2)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        z = self.to_vae_latents(x0.float()).to(self.vae.dtype)
        img = self.vae.decode(z, return_dict=False)[0].float()
        return (img / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() * 2 - 1).to(self.vae.dtype)
        z = self.vae.encode(x).latent_dist.mode().float()
        b, c, h, w = z.shape
        z = z.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        mean, std = self._bn(z)
        return (z - mean) / std
