"""Cost accounting: forward/backward passes per epoch of each method, and a FLOP-based GPU-hour predictor.

Counts follow the methods as implemented (and the references): per rollout sample (initial noise),

- NFT:      rollout ``steps x cfg`` forwards; training ``T' x (1 old + [1 ref] + 1 trainable)`` forwards and
            ``T'`` backwards (T' = int(steps x 0.99)).
- FlowGRPO: rollout ``steps x cfg`` forwards; training ``T x cfg x (1 trainable + [1 ref])`` forwards and
            ``T x cfg`` backwards (cfg = 2 with guidance, T = trained steps: 9 of 10, or the SDE window); its
            variants too (GRPO-Guard: the same passes, usually without the reference forward).
- TempFlow-GRPO: rollout ``(S + K sum_i (steps - 1 - i)) x cfg`` forwards (the ODE trunk, then K branches per branch
            point i continued by the ODE; S = 9, K = 6: 279 x 2), ``S x K`` images decoded and scored (54, FlowGRPO:
            1); training as FlowGRPO over ``S x K`` (latent, step) pairs.
- AWM:      rollout ``steps x cfg`` forwards (SA-Solver: one evaluation per step); training ``T x (1 trainable +
            [1 ref] + [1 ema])`` forwards and ``T`` backwards (T = 6: 14 + 18 + 2 x 6 = 44 forward-equivalents).
- DGPO:     rollout ``steps x cfg`` forwards (DPM-Solver++(2M)); training ``M x (1 trainable + [ref x kl_cfg] +
            [1 ema_ref])`` forwards and ``M`` backwards (M = 4, reference GenEval: 20 + 12 + 2 x 4 = 40).

Every sample but TempFlow's gives one image, so per sample is per image there.

A backward costs about two forwards. ``family_flops_per_forward`` gives the FLOPs of one image-forward of each model
family's released architecture (:mod:`bench.published`). ``predict_gpu_hours`` turns counts into hours from the
transformer's FLOPs per image-forward and an achieved FLOP/s (measure it with ``python -m bench.perf``), so users can
plan paper-scale runs.
"""
from __future__ import annotations

from dataclasses import dataclass

from methods.registry import get, method_config
from rollout.samplers import branch_cost


@dataclass
class PassCounts:
    rollout_forward: float
    train_forward: float
    train_backward: float
    images: float = 1.0
    """Images decoded and scored (reward calls) per rollout sample."""

    @property
    def forward_equivalents(self) -> float:
        return self.rollout_forward + self.train_forward + 2 * self.train_backward


def passes_per_image(method: str, cfg) -> PassCounts:
    """Pass counts per rollout sample (per image, except TempFlow's 54 images per sample) for a resolved
    :class:`bench.config.RunConfig`."""
    if method == "nft":
        m = cfg.nft
        cfg_mult = 2 if m.rollout_guidance != 1.0 else 1
        t_train = int(m.num_steps * m.timestep_fraction)
        fwd = t_train * (2 + (1 if m.kl_beta > 0 else 0))
        return PassCounts(m.num_steps * cfg_mult, fwd, t_train)
    if get(method).config_field == "flowgrpo":
        # a config resolved for this very method already holds its variant settings (and the user's overrides)
        m = cfg.flowgrpo if cfg.method == method else method_config(method, cfg.flowgrpo)
        cfg_mult = 2 if m.guidance != 1.0 else 1
        t_train = m.sde_window if m.sde_window > 0 else int(m.num_steps * m.timestep_fraction)
        rollout, images = m.num_steps, 1
        if m.branches > 0:  # TempFlow: every trained step is a branch point with K branches, each a trained pair
            t_train = min(t_train, m.num_steps - 1)
            rollout, images = branch_cost(m.num_steps, m.branches, t_train)
            t_train = images
        fwd = t_train * cfg_mult * (1 + (1 if m.kl_beta > 0 else 0))
        return PassCounts(rollout * cfg_mult, fwd, t_train * cfg_mult, images)
    if method == "awm":
        m = cfg.awm
        fwd = m.train_timesteps * (1 + (m.beta > 0) + (m.ema_beta > 0 or m.off_policy))
        return PassCounts(m.num_steps * (2 if m.guidance != 1.0 else 1), fwd, m.train_timesteps)
    if get(method).config_field == "dgpo":
        m = cfg.dgpo if cfg.method == method else method_config(method, cfg.dgpo)
        base = (2 if m.kl_cfg > 1 else 1) if (not m.use_ema_ref or m.kl_beta > 0) else 0
        old = 1 if (m.clip_dsm or m.clip_kl or m.use_ema_ref) else 0
        fwd = m.num_train_timesteps * (1 + base + old)
        return PassCounts(m.num_steps * (2 if m.rollout_guidance != 1.0 else 1), fwd, m.num_train_timesteps)
    if method == "cfg":
        return PassCounts(cfg.cfg.num_steps * (2 if cfg.cfg.guidance != 1.0 else 1), 0, 0)
    raise ValueError(f"no pass model for method {method!r}")


def transformer_flops_per_forward(params: float, image_tokens: int, text_tokens: int, layers: int, width: int) -> float:
    """Approximate FLOPs of one image's forward: 2 x params x tokens (matmuls) + attention (4 x L x n^2 x width)."""
    n = image_tokens + text_tokens
    return 2 * params * n + 4 * layers * n * n * width


def family_flops_per_forward(model: str, resolution: int = 512, text_tokens: int | None = None) -> float:
    """FLOPs of one image's forward of published model ``model`` (:data:`bench.published.PUBLISHED`: flux-dev,
    flux-schnell, qwen-image, z-image, flux2-klein) at ``resolution`` px: its parameter count (from the released
    config), 16 x 16 px per image token (a VAE of factor 8 and 2 x 2 patches, in every one of these families), and
    ``text_tokens`` (default: the family's text length, an upper bound for Qwen-Image and Z-Image, which drop
    padding), through :func:`transformer_flops_per_forward`."""
    from bench.published import PUBLISHED
    from rollout.families import policy_class

    if model not in PUBLISHED:
        raise ValueError(f"no published architecture for {model!r}; choose from {', '.join(PUBLISHED)}")
    spec = PUBLISHED[model]
    if text_tokens is None:
        text_tokens = policy_class(spec.family).default_options().max_sequence_length
    layers, width = spec.depth_and_width()
    return transformer_flops_per_forward(spec.transformer_params(), (resolution // 16) ** 2, text_tokens, layers, width)


def predict_gpu_hours(method: str, cfg, flops_per_forward: float, achieved_flops: float, images: int) -> float:
    """GPU-hours for ``images`` rollout samples (initial noises) of ``method`` at ``achieved_flops`` FLOP/s per GPU."""
    return passes_per_image(method, cfg).forward_equivalents * flops_per_forward * images / achieved_flops / 3600
