"""The sigma schedule every sampler and trainer shares.

Rectified flow: ``x_t = (1 - t) x0 + t eps`` with ``t = sigma``; ``t = 1`` is pure noise. The table comes from
diffusers' ``FlowMatchEulerDiscreteScheduler`` exactly as the SD3 pipeline sets it for N steps -- never re-derived
by hand (see ../shared/spec/diffusionnft.md).
"""
from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


def sigmas(num_steps: int, shift: float = 3.0) -> torch.Tensor:
    """Sigma table of length ``num_steps + 1``, from 1.0 down to a final 0 (float32).

    For ``num_steps=10, shift=3.0``: ``[1.0, .9601, .9133, .8577, .7904, .7073, .6022, .4649, .2780, .0089, 0]``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(num_steps)
    table = scheduler.sigmas.to(torch.float32)
    assert table.shape == (num_steps + 1,) and table[-1] == 0, table
    return table


def sigmas_from_scheduler(scheduler, num_steps: int) -> torch.Tensor:
    """The same table from a model's own scheduler (its shift and config), as the pipeline would set it."""
    scheduler.set_timesteps(num_steps)
    return scheduler.sigmas.detach().to(torch.float32).cpu().clone()


def to_timestep(sigma: torch.Tensor | float, batch: int, device, integer: bool) -> torch.Tensor:
    """The transformer's timestep input, ``sigma * 1000``.

    ``integer=True`` truncates like the references' rollout (``torch.full(..., sigma * 1000, dtype=long)``:
    960.1 -> 960, 8.9 -> 8); ``integer=False`` keeps the float value used in their training forwards.
    """
    t = torch.as_tensor(sigma, dtype=torch.float32, device=device) * 1000
    if t.ndim == 0:
        t = t.expand(batch)
    if integer:
        t = t.to(torch.long)
    return t


def pipeline_sigmas(scheduler, base, mu: float | None) -> torch.Tensor:
    """The table a FLUX-style pipeline integrates: its base sigmas (``linspace(1, 1/N, N)``) through the scheduler's
    own shift -- resolution-dependent with ``mu`` when the scheduler uses dynamic shifting, its static ``shift``
    otherwise -- with the final 0 appended, exactly as the pipeline's ``retrieve_timesteps`` sets it."""
    scheduler.set_timesteps(sigmas=base, mu=mu)
    return scheduler.sigmas.detach().to(torch.float32).cpu().clone()


def resolution_shift(scheduler, image_seq_len: int) -> float:
    """FLUX's ``mu`` for ``image_seq_len`` image tokens: diffusers' ``calculate_shift`` on the scheduler's config
    (base / max sequence length and shift), as FluxPipeline, QwenImagePipeline and ZImagePipeline compute it."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = scheduler.config
    return calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                           cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
