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

GRPO-Guard (arXiv 2510.22319; ../shared/spec/grpo-guard.md; options ``ratio_norm`` and ``grad_reweight``, registry
variant ``grpo-guard``) changes only the loss at a trained step j, using the sampling policy's step means:

    g = std_t sqrt(dt_j)                                   # the step's Gaussian std: one number per micro-batch
    b = mean((mu_theta - mu_old)^2) / (2 g^2)              # reference: over the whole micro-batch; paper: per sample
    ratio = exp((log p_theta - log p_old + b) g)           # RatioNorm: centred on 1, spread free of the noise level
    L_pg = mean(max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))) / dt_j      # gradient reweight

TempFlow-GRPO (branching rollout, per-step advantages, noise-aware weights) is the sibling file ``tempflow.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from methods.base import Method, OptimConfig, RolloutBatch, RolloutSpec, mean_metrics
from rollout import lora
from rollout.advantages import group_advantages
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
    global_std: bool = True
    """Advantage scale: the std of all the epoch's rewards (FlowGRPO reference) or each group's own (False: the
    GRPO-Guard and TempFlow-GRPO references)."""
    ratio_norm: bool = False
    """GRPO-Guard's RatioNorm: ratio ``exp((log p - log p_old + b) g)`` with the sampling policy's step means
    (SDE solver only)."""
    grad_reweight: bool = False
    """GRPO-Guard's gradient reweight: step j's policy loss divided by ``dt_j = s_j - s_{j+1}`` (SDE solver only)."""
    guard_per_sample_bias: bool = False
    """RatioNorm's bias ``b`` per sample (mean over C,H,W: verl-omni, Flow-Factory) instead of the reference's one
    number per micro-batch (its mean over an empty dim tuple reduces over the whole batch)."""
    branches: int = 0
    """TempFlow-GRPO (``tempflow-grpo`` only): > 0 samples an ODE trunk with this many SDE branches at every trained
    step (``rollout.samplers.sample_branches``), each continued by the ODE and scored; 0 keeps FlowGRPO's rollout."""
    step_weight: Literal["none", "noise_aware"] = "none"
    """TempFlow-GRPO (``tempflow-grpo`` only): step j's policy terms times ``step_weight_scale std_t sqrt(dt_j)``."""
    step_weight_scale: float = 2.25
    """Scale of the noise-aware weight (2.25: mean weight 0.999 over the 9 trained steps of N = 10, a = 0.7)."""
    adv_group: Literal["prompt", "seed"] = "prompt"
    """TempFlow-GRPO (``tempflow-grpo`` only): advantages per step over a prompt's rows of the epoch, or over the K
    branches of one initial noise ("seed": the reference's per-GPU groups with one prompt per sampling batch)."""


def clipped_objective(ratio: torch.Tensor, adv: torch.Tensor, clip_range: float, adv_clip_max: float,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """PPO's ``mean(max(-A_c w ratio, -A_c w clip(ratio, 1 - eps, 1 + eps)))``, ``A_c = clip(A, -C, C)``, w = 1 or
    a per-sample weight [B]."""
    adv_c = adv.clamp(-adv_clip_max, adv_clip_max).to(ratio.dtype)
    if weight is not None:
        adv_c = adv_c * weight.to(ratio)
    unclipped = -adv_c * ratio
    clipped = -adv_c * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped).mean()


def mean_kl(mean: torch.Tensor | None, mean_ref: torch.Tensor | None, std: torch.Tensor | None, beta: float,
            like: torch.Tensor) -> torch.Tensor:
    """``mean_batch(mean_CHW((mean - mean_ref)^2) / (2 std^2))`` (0 when ``beta`` is 0), ``std`` [B,1,1,1]."""
    if beta <= 0:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    dims = tuple(range(1, mean.ndim))
    return (((mean - mean_ref.detach()) ** 2).mean(dim=dims) / (2 * std.reshape(-1) ** 2)).mean()


def ratio_info(log_ratio: torch.Tensor, ratio: torch.Tensor, clip_range: float, policy: torch.Tensor,
               kl: torch.Tensor) -> dict[str, torch.Tensor]:
    """The logged numbers of a PPO step: approx_kl from the raw log-ratio, clipfrac and ratio_mean from ``ratio``."""
    with torch.no_grad():
        return {"policy_loss": policy.detach(), "kl_loss": kl.detach(), "approx_kl": 0.5 * (log_ratio ** 2).mean(),
                "clipfrac": ((ratio - 1).abs() > clip_range).float().mean(), "ratio_mean": ratio.mean()}


def grpo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor, clip_range: float,
              adv_clip_max: float, mean: torch.Tensor | None, mean_ref: torch.Tensor | None, std: torch.Tensor | None,
              beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clipped policy loss plus ``beta`` times the KL between step means.

    ``kl = mean_batch(mean_CHW((mean - mean_ref)^2) / (2 std^2))`` with ``std`` the step's std_t [B,1,1,1]
    (pass ``std_t sqrt(-dt)`` for the older form). ``info``: policy_loss, kl_loss, approx_kl, clipfrac, ratio_mean.
    """
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    policy = clipped_objective(ratio, adv, clip_range, adv_clip_max)
    kl = mean_kl(mean, mean_ref, std, beta, log_prob)
    return policy + beta * kl, ratio_info(log_ratio, ratio, clip_range, policy, kl)


def guard_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor, mean: torch.Tensor, old_mean: torch.Tensor,
                std: torch.Tensor, sqrt_dt: torch.Tensor, per_sample_bias: bool = False) -> torch.Tensor:
    """GRPO-Guard's RatioNorm ratio [B]: ``exp((log p - log p_old + b) g)``.

    ``g = mean(std) mean(sqrt_dt)`` is the step's Gaussian std (``std`` = std_t [B,1,1,1], ``sqrt_dt`` =
    sqrt(s - s') [B,1,1,1] or [B]; one number, as every row of a micro-batch shares its step);
    ``b = mean((mean - old_mean)^2) / (2 g^2)`` over all elements (reference) or per sample over C,H,W. For
    x' = mu_old + g eps and D = mean - old_mean, per sample ``(log p - log p_old + b_i) g = mean_CHW(eps D)``.
    """
    g = std.mean() * sqrt_dt.mean()
    sq = (mean - old_mean) ** 2
    bias = sq.mean(dim=tuple(range(1, sq.ndim))) if per_sample_bias else sq.mean()
    return torch.exp((log_prob - old_log_prob + bias / (2 * g**2)) * g)


def guard_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor, clip_range: float,
               adv_clip_max: float, mean: torch.Tensor, old_mean: torch.Tensor | None, std: torch.Tensor,
               sqrt_dt: torch.Tensor, mean_ref: torch.Tensor | None, beta: float, reweight: bool = True,
               per_sample_bias: bool = False, *, ratio_norm: bool = True
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO-Guard's loss: the PPO clip on :func:`guard_ratio`, divided by ``mean(sqrt_dt)^2`` (= dt) when
    ``reweight``, plus ``beta`` times the KL on means with ``std`` = std_t.

    ``ratio_norm=False`` keeps the plain ratio (the reweight-only ablation; ``old_mean`` is then unused). ``info``:
    policy_loss (after the reweight), kl_loss, approx_kl (raw log-ratio), clipfrac, clipfrac_gt_one,
    clipfrac_lt_one, ratio_mean (of the ratio the clip sees).
    """
    log_ratio = log_prob - old_log_prob
    ratio = (guard_ratio(log_prob, old_log_prob, mean, old_mean, std, sqrt_dt, per_sample_bias) if ratio_norm
             else torch.exp(log_ratio))
    policy = clipped_objective(ratio, adv, clip_range, adv_clip_max)
    if reweight:
        policy = policy / sqrt_dt.mean() ** 2
    kl = mean_kl(mean, mean_ref, std, beta, log_prob)
    info = ratio_info(log_ratio, ratio, clip_range, policy, kl)
    with torch.no_grad():
        info["clipfrac_gt_one"] = (ratio - 1 > clip_range).float().mean()
        info["clipfrac_lt_one"] = (1 - ratio > clip_range).float().mean()
    return policy + beta * kl, info


def filter_zero_advantage(adv: torch.Tensor, num_micro: int, generator: torch.Generator) -> torch.Tensor:
    """Indices kept for training: non-zero advantages (a row of per-step advantages [N, T]: any non-zero step),
    plus random dropped ones re-added until the kept count is a (non-zero) multiple of ``num_micro``."""
    nonzero = adv != 0 if adv.ndim == 1 else (adv != 0).any(dim=1)
    keep = nonzero.nonzero().flatten()
    dropped = (~nonzero).nonzero().flatten()
    dropped = dropped[torch.randperm(len(dropped), generator=generator)]
    need = (-len(keep)) % num_micro if len(keep) >= num_micro else num_micro - len(keep)
    return torch.cat([keep, dropped[:need]]).sort().values


class FlowGRPO(Method):
    name = "flowgrpo"
    tempflow_options = False
    """Whether the TempFlow-GRPO options (branches, step_weight, adv_group) are this class's to honour."""

    def __init__(self, policy, cfg: FlowGRPOConfig, optim: OptimConfig, seed: int = 0):
        super().__init__(policy, optim, seed)
        self.cfg = cfg
        self.check_options()

    def check_options(self) -> None:
        """Refuse option combinations this loop would not honour."""
        cfg = self.cfg
        if (cfg.ratio_norm or cfg.grad_reweight) and cfg.solver != "sde":
            raise ValueError("flowgrpo.ratio_norm / grad_reweight (GRPO-Guard) normalise the SDE step's Gaussian: "
                             "set flowgrpo.solver=sde")
        if (cfg.ratio_norm or cfg.grad_reweight) and cfg.kl_beta > 0 and cfg.kl_form != "std":
            raise ValueError("GRPO-Guard's KL divides by std_t (kl_form=std): set flowgrpo.kl_form=std or kl_beta=0")
        tempflow = cfg.branches > 0 or cfg.step_weight != "none" or cfg.adv_group != "prompt"
        if tempflow and not self.tempflow_options:
            raise ValueError("flowgrpo.branches / step_weight / adv_group are TempFlow-GRPO's options: run "
                             "--methods tempflow-grpo")

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
                           sde_window=self._window(epoch), integer_timestep=self.cfg.integer_timestep,
                           keep_means=self.cfg.ratio_norm)

    def eval_guidance(self) -> float:
        return self.cfg.eval_guidance

    def advantages(self, rewards: torch.Tensor, prompts: list[str], sample_ids: torch.Tensor) -> torch.Tensor:
        return group_advantages(rewards, prompts, global_std=self.cfg.global_std)

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

    def step_loss(self, batch: RolloutBatch, idx: torch.Tensor, j: int, log_prob: torch.Tensor, mean: torch.Tensor,
                  std: torch.Tensor, mean_ref: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of trained step ``j`` on micro-batch ``idx``: FlowGRPO's, or GRPO-Guard's with its options."""
        cfg, device = self.cfg, self.policy.device
        old = batch.log_probs[idx, j].to(device)
        adv = batch.advantages[idx].to(device)
        if not (cfg.ratio_norm or cfg.grad_reweight):
            return grpo_loss(log_prob, old, adv, cfg.clip_range, cfg.adv_clip_max, mean, mean_ref, std, cfg.kl_beta)
        old_mean = batch.means[idx, j].to(device) if cfg.ratio_norm else None
        sqrt_dt = torch.sqrt(batch.sigmas[j] - batch.sigmas[j + 1]).to(device).expand(len(idx))
        return guard_loss(log_prob, old, adv, cfg.clip_range, cfg.adv_clip_max, mean, old_mean, std, sqrt_dt,
                          mean_ref, cfg.kl_beta, reweight=cfg.grad_reweight,
                          per_sample_bias=cfg.guard_per_sample_bias, ratio_norm=cfg.ratio_norm)

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
            for j in steps:
                log_prob, mean, std = self._step_log_prob(batch, idx, j, cond, grad=True)
                mean_ref = None
                if cfg.kl_beta > 0:
                    with lora.reference(t_model):
                        _, mean_ref, _ = self._step_log_prob(batch, idx, j, cond, grad=False)
                loss, info = self.step_loss(batch, idx, j, log_prob, mean, std, mean_ref)
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
