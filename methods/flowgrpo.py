"""FlowGRPO: policy gradient on an SDE reverse process (arXiv 2505.05470), with its Fast / CPS / CFG-free variants.

Reads beside the paper's algorithm (and ../shared/spec/flowgrpo.md, what the reference code does):

    for each epoch:
        sample K images per prompt with the CURRENT policy on the SDE (CFG 4.5), storing per step
            x_t, x_{t-1}, log p_old(x_{t-1} | x_t)
        A = group_advantage(reward); drop zero-advantage samples (per rank)
        for each micro-batch, for each trained step t (the first 9 of 10):
            ratio = exp(log p_theta(x_{t-1} | x_t) - log p_old)
            L = mean(max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))) + beta KL(p_theta || p_ref)   # KL on means
        two optimizer steps per epoch; EMA every 8 steps (for evaluation)

Flow-GRPO-Fast: SDE (here CPS) only inside a window of a few steps, ODE elsewhere, and only the window is trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from methods.base import Method, OptimConfig, RolloutBatch, RolloutSpec, mean_metrics
from rollout import lora
from rollout.samplers import sde_step


@dataclass
class FlowGRPOConfig:
    """FlowGRPO hyperparameters (defaults: the reference's GenEval config on SD3.5-Medium)."""

    solver: Literal["sde", "cps"] = "sde"
    """Stochastic step: FlowGRPO's SDE or the coefficient-preserving "cps"."""
    num_steps: int = 10
    """Sampler steps."""
    noise_level: float = 0.7
    """SDE noise level a (0.7 for sde; 0.8 typical for cps)."""
    guidance: float = 4.5
    """CFG at rollout and in training (1.0 = CFG-free training, a single forward)."""
    detach_uncond: bool = False
    """Detach the unconditional CFG branch in training (the reference of 2025-07-15..18 did)."""
    clip_range: float = 1e-4
    """PPO ratio clip (log-probs are means over C,H,W, hence tiny; 1e-5 for cps)."""
    adv_clip_max: float = 5.0
    """Advantages clipped to [-C, C]."""
    kl_beta: float = 0.04
    """KL coefficient (0.04 GenEval/OCR, 0.01 PickScore, 0 for the Fast/CPS configs)."""
    kl_form: Literal["std", "std_dt"] = "std"
    """KL on means divided by 2 std_t^2 (reference) or by 2 (std_t sqrt(-dt))^2 (the paper's older form; it used a
    10x smaller beta -- do not mix the two)."""
    timestep_fraction: float = 0.99
    """Train the first ``int(num_steps * timestep_fraction)`` steps (the last step is never trained)."""
    sde_window: int = 0
    """> 0: Flow-GRPO-Fast. SDE only on this many consecutive steps, the window start drawn per epoch inside the
    first half of the steps; only the window is trained."""
    train_batch_size: int = 8
    """Micro-batch size before the zero-advantage filter (sets the number of micro-batches per epoch)."""
    steps_per_epoch: int = 2
    """Optimizer steps per epoch (reference: 2)."""
    ema_every: int = 8
    """EMA applied when (optimizer steps + 1) % ema_every == 0, after every micro-batch (reference behaviour)."""
    integer_timestep: bool = False
    """The FlowGRPO reference feeds float timesteps at sampling and training (on-policy ratio = 1)."""
    eval_guidance: float = 4.5
    """CFG when evaluating the trained model."""


def grpo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor, clip_range: float,
              adv_clip_max: float, mean: torch.Tensor | None, mean_ref: torch.Tensor | None, std: torch.Tensor | None,
              beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clipped policy loss plus ``beta`` times the KL between step means.

    ``kl = mean_batch(mean_CHW((mean - mean_ref)^2) / (2 std^2))`` with ``std`` the step's std_t [B,1,1,1]
    (pass ``std_t sqrt(-dt)`` for the older form). ``info``: policy_loss, kl_loss, approx_kl, clipfrac, ratio_mean.
    """
    adv_c = adv.clamp(-adv_clip_max, adv_clip_max).to(log_prob.dtype)
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -adv_c * ratio
    clipped = -adv_c * ratio.clamp(1 - clip_range, 1 + clip_range)
    policy = torch.maximum(unclipped, clipped).mean()
    if beta > 0:
        dims = tuple(range(1, mean.ndim))
        kl = (((mean - mean_ref.detach()) ** 2).mean(dim=dims) / (2 * std.reshape(-1) ** 2)).mean()
    else:
        kl = torch.zeros((), dtype=log_prob.dtype, device=log_prob.device)
    loss = policy + beta * kl
    with torch.no_grad():
        info = {"policy_loss": policy.detach(), "kl_loss": kl.detach(),
                "approx_kl": 0.5 * ((log_prob - old_log_prob) ** 2).mean(),
                "clipfrac": ((ratio - 1).abs() > clip_range).float().mean(), "ratio_mean": ratio.mean()}
    return loss, info


def filter_zero_advantage(adv: torch.Tensor, num_micro: int, generator: torch.Generator) -> torch.Tensor:
    """Indices kept for training: non-zero advantages, plus random dropped ones re-added until the kept count is
    a (non-zero) multiple of ``num_micro``."""
    keep = (adv != 0).nonzero().flatten()
    dropped = (adv == 0).nonzero().flatten()
    dropped = dropped[torch.randperm(len(dropped), generator=generator)]
    need = (-len(keep)) % num_micro if len(keep) >= num_micro else num_micro - len(keep)
    return torch.cat([keep, dropped[:need]]).sort().values


class FlowGRPO(Method):
    name = "flowgrpo"

    def __init__(self, policy, cfg: FlowGRPOConfig, optim: OptimConfig, seed: int = 0):
        super().__init__(policy, optim, seed)
        self.cfg = cfg

    def _window(self, epoch: int) -> tuple[int, int] | None:
        if self.cfg.sde_window <= 0:
            return None
        last_start = max(0, self.cfg.num_steps // 2 - self.cfg.sde_window)
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)  # same window on every rank
        start = int(torch.randint(0, last_start + 1, (1,), generator=g))
        return start, start + self.cfg.sde_window

    def rollout_spec(self, epoch: int) -> RolloutSpec:
        return RolloutSpec(solver=self.cfg.solver, num_steps=self.cfg.num_steps, guidance=self.cfg.guidance,
                           adapter=lora.TRAINABLE, noise_level=self.cfg.noise_level, keep_trajectory=True,
                           sde_window=self._window(epoch), integer_timestep=self.cfg.integer_timestep)

    def eval_guidance(self) -> float:
        return self.cfg.eval_guidance

    def trained_steps(self, batch: RolloutBatch) -> list[int]:
        if self.cfg.sde_window > 0:
            return [i for i, s in enumerate(batch.stochastic) if s]
        return list(range(int(self.cfg.num_steps * self.cfg.timestep_fraction)))

    def _step_log_prob(self, batch: RolloutBatch, idx: torch.Tensor, j: int, cond, grad: bool):
        cfg, policy = self.cfg, self.policy
        x = batch.latents[idx, j].to(policy.device)
        nxt = batch.next_latents[idx, j].to(policy.device)
        s, s_next = float(batch.sigmas[j]), float(batch.sigmas[j + 1])
        with torch.set_grad_enabled(grad):
            v = policy.velocity(x, s, cond, guidance=cfg.guidance, integer_timestep=cfg.integer_timestep,
                                detach_uncond=cfg.detach_uncond)
            _, log_prob, mean, std = sde_step(v, x, s, s_next, cfg.noise_level, prev_sample=nxt, kind=cfg.solver)
        if cfg.kl_form == "std_dt":
            std = std * (s - s_next) ** 0.5
        return log_prob, mean, std

    def train_epoch(self, batch: RolloutBatch, epoch: int, generator: torch.Generator) -> dict[str, float]:
        cfg, t_model = self.cfg, self.policy.transformer
        n = len(batch)
        if n % cfg.train_batch_size:
            raise ValueError(f"flowgrpo: {n} samples per rank per epoch not divisible by train_batch_size="
                             f"{cfg.train_batch_size}; change train_batch_size or the rollout batch arithmetic")
        num_micro = n // cfg.train_batch_size
        if num_micro % cfg.steps_per_epoch:
            raise ValueError(f"flowgrpo: {num_micro} micro-batches not divisible by steps_per_epoch="
                             f"{cfg.steps_per_epoch}; change train_batch_size or steps_per_epoch")
        accum = num_micro // cfg.steps_per_epoch
        kept = filter_zero_advantage(batch.advantages, num_micro, generator)
        kept = kept[torch.randperm(len(kept), generator=generator)]
        micro = len(kept) // num_micro
        steps = self.trained_steps(batch)
        rows, step_rows = [], []
        for k in range(num_micro):
            idx = kept[k * micro:(k + 1) * micro]
            cond = (batch.embeds[idx].to(self.policy.device), batch.pooled[idx].to(self.policy.device))
            adv = batch.advantages[idx].to(self.policy.device)
            for j in steps:
                log_prob, mean, std = self._step_log_prob(batch, idx, j, cond, grad=True)
                mean_ref = None
                if cfg.kl_beta > 0:
                    with lora.reference(t_model):
                        _, mean_ref, _ = self._step_log_prob(batch, idx, j, cond, grad=False)
                old = batch.log_probs[idx, j].to(self.policy.device)
                loss, info = grpo_loss(log_prob, old, adv, cfg.clip_range, cfg.adv_clip_max, mean, mean_ref, std,
                                       cfg.kl_beta)
                self.backward(loss / (accum * len(steps)))
                rows.append({"loss": float(loss.detach()), **{key: float(v) for key, v in info.items()}})
            if (k + 1) % accum == 0:
                step_rows.append(self.optimizer_step())
            if (self.global_step + 1) % cfg.ema_every == 0:
                self.ema.update(lora.ema_decay(self.global_step))
        cfg_mult = 2 if cfg.guidance != 1.0 else 1
        passes = len(kept) * len(steps) * cfg_mult
        return {**mean_metrics(rows), **mean_metrics(step_rows), "kept_fraction": len(kept) / n,
                "count/train_forward": passes * (2 if cfg.kl_beta > 0 else 1), "count/train_backward": passes}
