"""Cost accounting: forward/backward passes per epoch of each method, and a FLOP-based GPU-hour predictor.

Counts follow the methods as implemented (and the references): per image,

- NFT:      rollout ``steps x cfg`` forwards; training ``T' x (1 old + [1 ref] + 1 trainable)`` forwards and
            ``T'`` backwards (T' = int(steps x 0.99)).
- FlowGRPO: rollout ``steps x cfg`` forwards; training ``T x cfg x (1 trainable + [1 ref])`` forwards and
            ``T x cfg`` backwards (cfg = 2 with guidance, T = trained steps: 9 of 10, or the SDE window).

A backward costs about two forwards. ``predict_gpu_hours`` turns counts into hours from the transformer's FLOPs per
image-forward and an achieved FLOP/s (measure it with ``python -m bench.perf``), so users can plan paper-scale runs.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PassCounts:
    rollout_forward: float
    train_forward: float
    train_backward: float

    @property
    def forward_equivalents(self) -> float:
        return self.rollout_forward + self.train_forward + 2 * self.train_backward


def passes_per_image(method: str, cfg) -> PassCounts:
    """Per-image pass counts for a resolved :class:`bench.config.RunConfig`."""
    if method == "nft":
        m = cfg.nft
        cfg_mult = 2 if m.rollout_guidance != 1.0 else 1
        t_train = int(m.num_steps * m.timestep_fraction)
        fwd = t_train * (2 + (1 if m.kl_beta > 0 else 0))
        return PassCounts(m.num_steps * cfg_mult, fwd, t_train)
    if method in ("flowgrpo", "flowgrpo-fast"):
        from methods.registry import method_config

        # a config resolved for this very method already holds its variant settings (and the user's overrides)
        m = cfg.flowgrpo if cfg.method == method else method_config(method, cfg.flowgrpo)
        cfg_mult = 2 if m.guidance != 1.0 else 1
        t_train = m.sde_window if m.sde_window > 0 else int(m.num_steps * m.timestep_fraction)
        fwd = t_train * cfg_mult * (1 + (1 if m.kl_beta > 0 else 0))
        return PassCounts(m.num_steps * cfg_mult, fwd, t_train * cfg_mult)
    if method == "cfg":
        return PassCounts(cfg.cfg.num_steps * (2 if cfg.cfg.guidance != 1.0 else 1), 0, 0)
    raise ValueError(f"no pass model for method {method!r}")


def transformer_flops_per_forward(params: float, image_tokens: int, text_tokens: int, layers: int, width: int) -> float:
    """Approximate FLOPs of one image's forward: 2 x params x tokens (matmuls) + attention (4 x L x n^2 x width)."""
    n = image_tokens + text_tokens
    return 2 * params * n + 4 * layers * n * n * width


def predict_gpu_hours(method: str, cfg, flops_per_forward: float, achieved_flops: float, images: int) -> float:
    """GPU-hours for ``images`` rollout images of ``method`` at ``achieved_flops`` FLOP/s per GPU."""
    return passes_per_image(method, cfg).forward_equivalents * flops_per_forward * images / achieved_flops / 3600
