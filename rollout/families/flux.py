"""FLUX.1 (dev and schnell): ``FluxPipeline`` with ``FluxTransformer2DModel``, CLIP-L (pooled) + T5 text encoders.

Conventions, as ``FluxPipeline.__call__`` has them (diffusers 0.42):

- latents are 16-channel VAE latents; the transformer takes 2 x 2 patches as tokens (``in_channels = 4 x 16``) with
  position ids (0, row, col) per token and all-zero text ids;
- its timestep input is ``sigma`` (the scheduler's ``t / 1000``), as a float;
- the sigma table is ``linspace(1, 1/N, N)`` through the scheduler: dev shifts it with ``mu`` linear in the number
  of image tokens (``calculate_shift``: resolution-dependent), schnell with its static shift 1;
- dev is guidance-distilled: :attr:`PolicyOptions.guidance_embed` (3.5) enters through the guidance embedding at
  every forward, and the harness's ``guidance`` is the pipeline's ``true_cfg_scale`` (true CFG with a negative
  prompt; 1 = off, what FlowGRPO's FLUX configs use). Schnell has no guidance embedding.
"""
from __future__ import annotations

import numpy as np
import torch
from diffusers import FluxPipeline

from rollout.families.base import FlowPolicy, PolicyOptions
from rollout.families.tokens import grid_ids, pack_2x2, unpack_2x2
from rollout.schedule import pipeline_sigmas, resolution_shift


class Packed2x2(FlowPolicy):
    """What FLUX.1 and Qwen-Image share: latents packed 2x2 into tokens (spatial size a multiple of 2), the
    resolution-dependent shift of the sigma table (mu from the token count), timesteps as t in [0, 1]."""

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        s = self.vae_scale * 2
        return (self.transformer.config.in_channels // 4, 2 * (height // s), 2 * (width // s))

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        _, h, w = self.latent_shape(height, width)
        mu = resolution_shift(self.scheduler, (h // 2) * (w // 2))
        return pipeline_sigmas(self.scheduler, np.linspace(1.0, 1 / num_steps, num_steps), mu)

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t / 1000


class FluxPolicy(Packed2x2):
    """FLUX.1-dev / FLUX.1-schnell. ``cond`` is ``(T5 embeds [B, L, 4096], CLIP pooled [B, 768])``."""

    family = "flux"
    pipeline_class = FluxPipeline
    hub_example = "black-forest-labs/FLUX.1-dev"
    optional_components = ("image_encoder", "feature_extractor")
    # FlowGRPO's FLUX LoRA (yifan123/flow_grpo scripts/train_flux.py, main(): ``target_modules``, r 64, alpha 128,
    # commit 74db691): the joint attention of every block plus both feed-forwards of the double blocks
    lora_targets = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                    "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                    "ff_context.net.2")

    @classmethod
    def default_options(cls) -> PolicyOptions:
        # 128 T5 tokens: FlowGRPO's FLUX text embeddings (scripts/train_flux.py, compute_text_embeddings calls);
        # float timesteps: FluxPipeline and FlowGRPO's FLUX rollout feed sigma unrounded
        return PolicyOptions(max_sequence_length=128, timestep_mode="float")

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    @property
    def distilled_guidance(self) -> bool:
        """Whether the transformer takes a guidance embedding (dev) or not (schnell)."""
        return bool(self.transformer.config.guidance_embeds)

    def encode_uncached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 embeds [B, L, D], CLIP pooled [B, P]) through ``FluxPipeline.encode_prompt``, with grad."""
        embeds, pooled, _ = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=self.device,
                                                    max_sequence_length=self.options.max_sequence_length)
        return embeds, pooled

    def forward(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        guidance = None
        if self.distilled_guidance:
            guidance = torch.full((b,), self.options.guidance_embed, device=x.device, dtype=torch.float32)
        out = self.transformer(hidden_states=pack_2x2(x), timestep=t, guidance=guidance, pooled_projections=aux,
                               encoder_hidden_states=embeds,
                               txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device, dtype=embeds.dtype),
                               img_ids=grid_ids(h // 2, w // 2, x.device, embeds.dtype), return_dict=False)[0]
        return unpack_2x2(out, h, w)
