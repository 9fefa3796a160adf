"""Z-Image: ``ZImagePipeline`` with ``ZImageTransformer2DModel`` and a Qwen3 text encoder.

Conventions, as ``ZImagePipeline.__call__`` has them (diffusers 0.42):

- latents are 16-channel VAE latents, fed spatially as a list of ``[C, 1, h, w]`` (the transformer patchifies);
- a prompt is the penultimate hidden states of its chat template, only its real tokens: each prompt has its own
  length, so the harness pads to ``max_sequence_length`` with a mask and hands the transformer the unpadded pieces;
- the transformer's time runs the other way (``(1000 - t) / 1000 = 1 - sigma``) and it predicts ``x0 - eps``: the
  harness negates its output to ``v ~ eps - x0``;
- sigma table ``linspace(1, 1/N, N)`` (in float32) through the scheduler with the resolution-dependent ``mu``;
- CFG is ``pos + w (pos - neg)``: the harness's scale ``g`` is ``1 + w`` (Z-Image-Turbo runs at ``w = 0``, i.e.
  ``g = 1``). Its optional CFG normalisation and truncation are not supported (both off by default).
"""
from __future__ import annotations

import torch
from diffusers import ZImagePipeline

from rollout.families.base import FlowPolicy, PolicyOptions
from rollout.families.tokens import pad_tokens
from rollout.schedule import pipeline_sigmas, resolution_shift


class ZImagePolicy(FlowPolicy):
    """Z-Image (Turbo and base). ``cond`` is ``(embeds [B, L, 2560] zero-padded, mask [B, L])``."""

    family = "z-image"
    pipeline_class = ZImagePipeline
    hub_example = "Tongyi-MAI/Z-Image-Turbo"
    # the attention projections of every block (no reference LoRA config known)
    lora_targets = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")

    @classmethod
    def default_options(cls) -> PolicyOptions:
        return PolicyOptions(max_sequence_length=512, timestep_mode="float")  # ZImagePipeline's defaults

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        s = self.vae_scale * 2
        return (self.transformer.in_channels, 2 * (height // s), 2 * (width // s))

    def sigmas(self, num_steps: int, height: int, width: int) -> torch.Tensor:
        _, h, w = self.latent_shape(height, width)
        mu = resolution_shift(self.scheduler, (h // 2) * (w // 2))
        return pipeline_sigmas(self.scheduler, torch.linspace(1.0, 1 / num_steps, num_steps).tolist(), mu)

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return (1000 - t) / 1000

    def to_velocity(self, out: torch.Tensor) -> torch.Tensor:
        return -out.float()

    def combine(self, v_u: torch.Tensor, v_c: torch.Tensor, guidance: float) -> torch.Tensor:
        return v_c + (guidance - 1) * (v_c - v_u)

    def encode_uncached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds [B, L, D], mask [B, L]) through ``ZImagePipeline.encode_prompt``, padded to L, with grad."""
        pieces, _ = self.pipe.encode_prompt(prompt=list(prompts), device=self.device, do_classifier_free_guidance=False,
                                            max_sequence_length=self.options.max_sequence_length)
        return pad_tokens(pieces, self.options.max_sequence_length)

    def forward(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        caps = [e[m.bool()] for e, m in zip(embeds, aux)]
        out = self.transformer(list(x.unsqueeze(2).unbind(0)), t, caps, return_dict=False)[0]
        return torch.stack(out).squeeze(2)
