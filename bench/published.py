"""The published models' architectures, for cost accounting and the performance benchmark at real size.

Each entry is a family's released transformer and VAE config (diffusers class and keyword arguments) and the shape of
its prompt embedding. :func:`random_policy` builds the policy with these configs and random weights; the text
encoders are left out and replaced by a stand-in that returns random prompt embeddings of the real width and length
(prompt encoding is cached and frozen in RL, so it is not part of an epoch's cost). Parameter counts (on the meta
device, no memory): FLUX.1 11.90 B, Qwen-Image 20.43 B, Z-Image 6.15 B, FLUX.2 klein 4B 3.88 B.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import (AutoencoderKL, AutoencoderKLFlux2, AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler,
                       Flux2Transformer2DModel, FluxTransformer2DModel, QwenImageTransformer2DModel,
                       ZImageTransformer2DModel)

from rollout.families.tiny import FLUX2_SCHEDULER, FLUX_DEV_SCHEDULER, FLUX_SCHNELL_SCHEDULER, QWEN_IMAGE_SCHEDULER
from rollout.families.tiny import Z_IMAGE_SCHEDULER

FLUX1_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                         axes_dims_rope=(16, 56, 56))
FLUX1_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                 latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                 scaling_factor=0.3611)
KLEIN4B_TRANSFORMER = dict(patch_size=1, in_channels=128, num_layers=5, num_single_layers=20, attention_head_dim=128,
                           num_attention_heads=24, joint_attention_dim=7680, timestep_guidance_channels=256,
                           mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, guidance_embeds=False)


@dataclass(frozen=True)
class PublishedModel:
    """One released model's architecture."""

    family: str
    """Family in :data:`rollout.families.FAMILIES`."""
    transformer_cls: type
    transformer: dict
    """The transformer's config (keyword arguments); an empty dict: the class's defaults are the release."""
    vae_cls: type
    vae: dict
    scheduler: dict
    text_width: int
    """Width D of the prompt embedding ``[L, D]``."""
    aux: str
    """What ``cond``'s second tensor is: "pooled" (width :attr:`aux_width`), "mask" (over the L tokens), "empty"."""
    aux_width: int = 0
    layers: tuple[str, ...] = ("num_layers",)
    """Config fields whose sum is the number of blocks that attend over the joint sequence (FLOP model)."""
    width_fields: tuple[str, ...] = ("num_attention_heads", "attention_head_dim")
    """Config fields whose product is the attention width."""
    pipeline_kwargs: dict = field(default_factory=dict)

    def build_transformer(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        with torch.device(device):
            return self.transformer_cls(**self.transformer)

    def transformer_params(self) -> int:
        """Parameter count of the transformer (built on the meta device: no memory)."""
        return sum(p.numel() for p in self.build_transformer("meta").parameters())

    def depth_and_width(self) -> tuple[int, int]:
        cfg = self.build_transformer("meta").config
        width = 1
        for name in self.width_fields:
            width *= cfg[name]
        return sum(cfg[name] for name in self.layers), width


PUBLISHED: dict[str, PublishedModel] = {
    # black-forest-labs/FLUX.1-dev and -schnell (their transformer differs only in the guidance embedding)
    "flux-dev": PublishedModel("flux", FluxTransformer2DModel, {**FLUX1_TRANSFORMER, "guidance_embeds": True},
                               AutoencoderKL, FLUX1_VAE, FLUX_DEV_SCHEDULER, 4096, "pooled", 768,
                               layers=("num_layers", "num_single_layers")),
    "flux-schnell": PublishedModel("flux", FluxTransformer2DModel, {**FLUX1_TRANSFORMER, "guidance_embeds": False},
                                   AutoencoderKL, FLUX1_VAE, FLUX_SCHNELL_SCHEDULER, 4096, "pooled", 768,
                                   layers=("num_layers", "num_single_layers")),
    # Qwen/Qwen-Image: diffusers' defaults are the release (60 blocks of width 3072, Qwen2.5-VL-7B's 3584-wide states)
    "qwen-image": PublishedModel("qwen-image", QwenImageTransformer2DModel, {}, AutoencoderKLQwenImage, {},
                                 QWEN_IMAGE_SCHEDULER, 3584, "mask"),
    # Tongyi-MAI/Z-Image-Turbo: diffusers' defaults (30 blocks of width 3840; Qwen3-4B's 2560-wide states); the two
    # refiner stages over image-only and text-only tokens are left out of the FLOP model's attention term
    "z-image": PublishedModel("z-image", ZImageTransformer2DModel, {}, AutoencoderKL, FLUX1_VAE, Z_IMAGE_SCHEDULER,
                              2560, "mask", layers=("n_layers",), width_fields=("dim",)),
    # black-forest-labs/FLUX.2-klein-4B: 5 double + 20 single blocks of width 3072, Qwen3-4B layers 9/18/27 (3 x 2560)
    "flux2-klein": PublishedModel("flux2-klein", Flux2Transformer2DModel, KLEIN4B_TRANSFORMER, AutoencoderKLFlux2, {},
                                  FLUX2_SCHEDULER, 7680, "empty", layers=("num_layers", "num_single_layers"),
                                  pipeline_kwargs={"is_distilled": True}),
}


def random_policy(model: str | PublishedModel, device: str | torch.device, seed: int = 0):
    """Published ``model`` (a name of :data:`PUBLISHED`, or a spec) with random weights as its family's policy:
    transformer and VAE as configured, no text encoders (a stand-in returns seeded random embeddings
    ``[L, text_width]`` per prompt, L the family's text length), autocast in the family's dtype on GPU."""
    from rollout.families import policy_class

    spec = PUBLISHED[model] if isinstance(model, str) else model
    cls = policy_class(spec.family)
    torch.manual_seed(seed)
    parts = dict(transformer=spec.transformer_cls(**spec.transformer), vae=spec.vae_cls(**spec.vae),
                 scheduler=FlowMatchEulerDiscreteScheduler(**spec.scheduler))
    names = [n for n in cls.pipeline_class._get_signature_keys(cls.pipeline_class)[0] if n.startswith(("text_", "tok"))]
    pipe = cls.pipeline_class(**parts, **{n: None for n in names}, **spec.pipeline_kwargs)
    options = cls.default_options()
    options.autocast_dtype = cls.cuda_dtype if torch.device(device).type == "cuda" else None
    policy = cls(pipe, options).to(device)
    length = options.max_sequence_length

    def stand_in(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        embeds = torch.randn(len(prompts), length, spec.text_width, generator=g)
        aux = {"pooled": torch.randn(len(prompts), spec.aux_width, generator=g),
               "mask": torch.ones(len(prompts), length), "empty": torch.zeros(len(prompts), 0)}[spec.aux]
        return embeds.to(policy.device), aux.to(policy.device)

    policy.encode_uncached = stand_in
    return policy
