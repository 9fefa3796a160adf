"""TempFlow-GRPO: FlowGRPO with trajectory branching and noise-aware step weights (arXiv 2508.04324).

Reads beside the paper's method (and ../shared/spec/tempflow-grpo.md, what the reference code does); everything not
written here is FlowGRPO's (methods/flowgrpo.py: SDE step, CFG, PPO clip, KL, two optimizer steps, EMA):

    for each epoch:
        for each initial noise: an ODE trunk x_0 .. x_{S-1} with the CURRENT policy (CFG 4.5); at every branch point i
            K SDE draws x'_{i,k} from the trunk's velocity, storing log p_old(x'_{i,k} | x_i)     # trajectory branching
            each branch continued by the ODE to a clean image and scored: R[k, i]                # a reward per step
        A[:, i] = group_advantage(R[:, i]) for every step i, over the K branches of one initial noise ("seed group")
        for each micro-batch of branch rows, for each trained step j (in order):
            ratio = exp(log p_theta(x'_j | x_j) - log p_old)
            w_j = 2.25 std_t sqrt(dt_j)                                           # noise-aware weight
            L = mean(max(-w_j A_j ratio, -w_j A_j clip(ratio, 1 - eps, 1 + eps))) + beta KL      # KL: the std_dt form

The rollout itself is the shared core's ``rollout.samplers.sample_branches``; with ``branches = 0`` this class is
FlowGRPO with the noise-aware weight alone (the paper's weighting ablation).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Hashable, Sequence

import torch

from methods.base import RolloutBatch, RolloutSpec
from methods.flowgrpo import FlowGRPO, clipped_objective, mean_kl, ratio_info
from rollout.advantages import group_advantages
from rollout.samplers import sde_std_t


def noise_aware_weight(sigma: float | torch.Tensor, sigma_next: float | torch.Tensor, noise_level: float = 0.7,
                       scale: float = 2.25) -> torch.Tensor:
    """``scale * std_t * sqrt(sigma - sigma_next)`` [B] in float32: the step's Gaussian std, scaled (the reference's
    2.25 makes the 9 trained steps of N = 10, a = 0.7 average 0.999: 1.575 at step 0 down to 0.507 at step 8)."""
    s = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1)
    s_next = torch.as_tensor(sigma_next, dtype=torch.float32).reshape(-1)
    return scale * sde_std_t(s, s_next, noise_level) * torch.sqrt(s - s_next)


def step_advantages(rewards: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor,
                    global_std: bool = False) -> torch.Tensor:
    """Per-step advantages [N, S] (float64): for every step column, ``(R - mean_group) / (std + 1e-4)`` with the
    group's population std, or the column's std over all rows (``global_std``)."""
    r = torch.as_tensor(rewards).to(torch.float64)
    return torch.stack([group_advantages(r[:, i], group_ids, global_std=global_std) for i in range(r.shape[1])], 1)


def tempflow_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor, weight: torch.Tensor,
                  clip_range: float, adv_clip_max: float, mean: torch.Tensor | None, mean_ref: torch.Tensor | None,
                  std: torch.Tensor | None, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`methods.flowgrpo.grpo_loss` with the policy terms multiplied by ``weight`` [B]; ``std`` is the step's
    Gaussian std [B,1,1,1] for the KL (the older form). ``info``: policy_loss, kl_loss, approx_kl, clipfrac,
    ratio_mean."""
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    policy = clipped_objective(ratio, adv, clip_range, adv_clip_max, weight)
    kl = mean_kl(mean, mean_ref, std, beta, log_prob)
    return policy + beta * kl, ratio_info(log_ratio, ratio, clip_range, policy, kl)


class TempFlowGRPO(FlowGRPO):
    name = "tempflow-grpo"
    tempflow_options = True

    def check_options(self) -> None:
        super().check_options()
        cfg = self.cfg
        if cfg.branches > 0 and (cfg.solver != "sde" or cfg.sde_window > 0):
            raise ValueError("tempflow-grpo: branches are SDE draws off an ODE trunk: set flowgrpo.solver=sde and "
                             "flowgrpo.sde_window=0")
        if cfg.branches > 0 and (cfg.ratio_norm or cfg.grad_reweight):
            raise ValueError("tempflow-grpo: GRPO-Guard's options are not implemented on the branching rollout; "
                             "run --methods grpo-guard")
        if cfg.adv_group == "seed" and cfg.branches <= 0:
            raise ValueError("tempflow-grpo: adv_group=seed groups the branches of one initial noise; it needs "
                             "flowgrpo.branches > 0")

    def branch_points(self) -> int:
        """Branch (= trained) steps: the first ``int(num_steps * timestep_fraction)``, at most all but the last."""
        return min(int(self.cfg.num_steps * self.cfg.timestep_fraction), self.cfg.num_steps - 1)

    def rollout_spec(self, epoch: int) -> RolloutSpec:
        spec = super().rollout_spec(epoch)
        if self.cfg.branches <= 0:
            return spec
        return replace(spec, branches=self.cfg.branches, branch_points=self.branch_points())

    def trained_steps(self, batch: RolloutBatch) -> list[int]:
        return list(range(batch.log_probs.shape[1])) if self.cfg.branches > 0 else super().trained_steps(batch)

    def advantages(self, rewards: torch.Tensor, prompts: list[str], sample_ids: torch.Tensor) -> torch.Tensor:
        if self.cfg.branches <= 0:
            return super().advantages(rewards, prompts, sample_ids)
        groups = sample_ids if self.cfg.adv_group == "seed" else prompts
        return step_advantages(rewards, groups, global_std=self.cfg.global_std)

    def step_loss(self, batch: RolloutBatch, idx: torch.Tensor, j: int, log_prob: torch.Tensor, mean: torch.Tensor,
                  std: torch.Tensor, mean_ref: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, device = self.cfg, self.policy.device
        old = batch.log_probs[idx, j].to(device)
        adv = (batch.advantages[idx, j] if batch.advantages.ndim == 2 else batch.advantages[idx]).to(device)
        weight = torch.ones(len(idx)) if cfg.step_weight == "none" else noise_aware_weight(
            batch.sigmas[j], batch.sigmas[j + 1], cfg.noise_level, cfg.step_weight_scale).expand(len(idx))
        return tempflow_loss(log_prob, old, adv, weight.to(device), cfg.clip_range, cfg.adv_clip_max, mean, mean_ref,
                             std, cfg.kl_beta)
