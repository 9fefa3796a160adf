"""DiffusionNFT: negative-aware fine-tuning on the forward process (arXiv 2509.16117).

Reads beside the paper's Algorithm 1 (and ../shared/spec/diffusionnft.md, which records what the reference code does):

    for each epoch:
        sample K images per prompt with the OLD policy, any black-box solver (default dpm2, no CFG), keep x0 only
        r = optimality_weight(group_advantage(reward))                       # in [0, 1]
        for each sample, for T' of the sampler's timesteps t (fresh eps):    # forward process, not the SDE
            x_t = (1 - t) x0 + t eps
            v_pos = b v_theta + (1 - b) v_old          # implicit positive policy
            v_neg = (1 + b) v_old - b v_theta          # implicit negative policy
            L = C * mean((r L_pos + (1 - r) L_neg) / b) + kl_beta * ||v_theta - v_ref||^2
        optimizer step(s); theta_old <- d theta_old + (1 - d) theta; EMA(theta) for evaluation

``nft_beta`` (b) is the implicit-policy step size, NOT the KL coefficient (that is ``kl_beta``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from methods.base import Method, OptimConfig, RolloutBatch, RolloutSpec, mean_metrics, micro_batches
from rollout import lora
from rollout.samplers import Solver

AdvMode = Literal["all", "positive_only", "negative_only", "one_only", "binary"]


@dataclass
class NFTConfig:
    """DiffusionNFT hyperparameters (defaults: the reference's GenEval config on SD3.5-Medium)."""

    solver: Solver = "dpm2"
    """Rollout solver; the paper's ablation ranks 2nd-order ODE > 1st-order ODE ("euler") > SDE."""
    num_steps: int = 10
    """Sampler steps; training uses the sampler's own timesteps."""
    rollout_guidance: float = 1.0
    """CFG at rollout: NFT trains CFG-free (1.0)."""
    timestep_fraction: float = 0.99
    """Train on ``int(num_steps * timestep_fraction)`` randomly chosen sampler timesteps per sample (9 of 10)."""
    nft_beta: float = 1.0
    """Implicit-policy step size b (1.0; 0.1 for OCR and multi-reward)."""
    kl_beta: float = 1e-4
    """KL-to-reference coefficient on velocity."""
    adv_clip_max: float = 5.0
    """C: advantages clipped to [-C, C] and scaled by 1/(2C); also multiplies the policy loss."""
    adv_mode: AdvMode = "all"
    """Variant of the clipped advantage before scaling."""
    weight_form: Literal["reference", "paper"] = "reference"
    """Optimality weight: reference ``clip(A_c/(2C) + 0.5, 0, 1)`` or paper ``0.5 + 0.5 clip(A, -1, 1)``."""
    loss_weighting: Literal["adaptive", "time", "velocity"] = "adaptive"
    """x0-space error / stopgrad(mean |x0 error|) (reference), x0-space error x (1 - t) (ablation), or plain
    velocity MSE to ``eps - x0`` (the paper's plain form)."""
    negative_branch: bool = True
    """False drops the ``(1 - r) L_neg`` term (ablation: collapses). Not the same as adv_mode=positive_only."""
    decay_type: str = "1"
    """Old-policy soft update after optimizer step s: "0" (d = 0, on-policy), "1" (min(0.001 s, 0.5)), "2" (OCR),
    "const:<d>" (e.g. const:0.9) or "linear:<rate>:<cap>" (min(rate s, cap); "1" is linear:0.001:0.5)."""
    train_batch_size: int = 8
    """Samples per micro-batch (per rank)."""
    steps_per_epoch: int = 1
    """Optimizer steps per epoch (1 for GenEval/PickScore/HPSv2, 2 for OCR)."""
    eval_guidance: float = 1.0
    """CFG when evaluating the trained model (NFT: none)."""


def optimality_weight(adv: torch.Tensor, adv_clip_max: float = 5.0, mode: AdvMode = "all",
                      form: Literal["reference", "paper"] = "reference") -> torch.Tensor:
    """r in [0, 1] from advantages. ``mode`` acts on the clipped advantage *before* the /(2C) scaling, so
    ``one_only`` gives r in {0.5, 0.6} and ``binary`` r in {0.4, 0.5, 0.6} for C = 5."""
    if form == "paper":
        return 0.5 + 0.5 * adv.clamp(-1, 1)
    c = adv_clip_max
    a = adv.clamp(-c, c)
    if mode == "positive_only":
        a = a.clamp(0, c)
    elif mode == "negative_only":
        a = a.clamp(-c, 0)
    elif mode == "one_only":
        a = (adv > 0).to(adv.dtype)
    elif mode == "binary":
        a = torch.sign(adv)
    elif mode != "all":
        raise ValueError(f"adv_mode must be one of all, positive_only, negative_only, one_only, binary; got {mode!r}")
    return (a / (2 * c) + 0.5).clamp(0, 1)


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t, dtype=like.dtype, device=like.device).reshape(-1, *([1] * (like.ndim - 1)))


def _branch_loss(v: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, weighting: str) -> torch.Tensor:
    """Per-sample loss of one implicit policy (float64 for the adaptive weighting, as in the reference)."""
    dims = tuple(range(1, x0.ndim))
    if weighting == "velocity":
        target = (x_t - x0) / t  # = eps - x0 on the forward process
        return ((v - target) ** 2).mean(dim=dims)
    x0_pred = x_t - t * v
    err = ((x0_pred - x0) ** 2).mean(dim=dims)
    if weighting == "time":
        return (1 - t.reshape(-1)) * err
    w = (x0_pred.double() - x0.double()).abs().mean(dim=dims).clamp_min(1e-5).detach()
    return err / w


def nft_loss(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, v_theta: torch.Tensor, v_old: torch.Tensor,
             v_ref: torch.Tensor | None, r: torch.Tensor, nft_beta: float = 1.0, kl_beta: float = 1e-4,
             adv_clip_max: float = 5.0, *, weighting: str = "adaptive", negative_branch: bool = True
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DiffusionNFT loss on one micro-batch at one timestep per sample.

    ``t`` is per sample ([B] or broadcastable); ``r`` the optimality weight [B]. Returns ``(loss, info)`` with
    per-sample ``positive_loss`` and ``negative_loss``, and scalar ``policy_loss`` and ``kl_loss`` (logged apart:
    the reference's logged policy loss wrongly includes the KL term).
    """
    b = nft_beta
    t = _per_sample(t, x0)
    v_old = v_old.detach()
    v_pos = b * v_theta + (1 - b) * v_old
    v_neg = (1 + b) * v_old - b * v_theta
    pos = _branch_loss(v_pos, x0, x_t, t, weighting)
    neg = _branch_loss(v_neg, x0, x_t, t, weighting)
    r = r.to(pos.dtype).reshape(-1)
    per_sample = r * pos + (1 - r) * neg if negative_branch else r * pos
    policy = adv_clip_max * (per_sample / b).mean()
    if kl_beta > 0:
        if v_ref is None:
            raise ValueError("nft_loss: kl_beta > 0 needs v_ref (the reference model's velocity)")
        kl = ((v_theta - v_ref.detach()) ** 2).mean(dim=tuple(range(1, x0.ndim))).mean()
    else:
        kl = torch.zeros((), dtype=v_theta.dtype, device=v_theta.device)
    loss = policy + kl_beta * kl
    return loss, {"positive_loss": pos.detach(), "negative_loss": neg.detach(), "policy_loss": policy.detach(),
                  "kl_loss": kl.detach()}


def old_policy_decay(step: int, decay_type: int | str) -> float:
    """Decay d of ``theta_old <- d theta_old + (1 - d) theta`` after ``step`` optimizer steps."""
    kind = str(decay_type)
    if kind == "0":
        return 0.0
    if kind == "1":
        return min(0.001 * step, 0.5)
    if kind == "2":
        return 0.0 if step < 75 else min((step - 75) * 0.0075, 0.999)
    try:
        if kind.startswith("const:"):
            return float(kind.split(":", 1)[1])
        if kind.startswith("linear:"):  # type 1 is linear:0.001:0.5; a faster ramp suits fewer, larger steps
            rate, cap = (float(v) for v in kind.split(":")[1:])
            return min(rate * step, cap)
    except ValueError:
        pass
    raise ValueError(f"nft.decay_type must be 0, 1, 2, 'const:<d>' or 'linear:<rate>:<cap>', got {decay_type!r}")


class DiffusionNFT(Method):
    name = "nft"

    def __init__(self, policy, cfg: NFTConfig, optim: OptimConfig, seed: int = 0):
        super().__init__(policy, optim, seed)
        self.cfg = cfg
        old_policy_decay(0, cfg.decay_type)  # validate early

    def rollout_spec(self, epoch: int) -> RolloutSpec:
        return RolloutSpec(solver=self.cfg.solver, num_steps=self.cfg.num_steps, guidance=self.cfg.rollout_guidance,
                           adapter=lora.OLD, keep_trajectory=False, integer_timestep=True)

    def eval_guidance(self) -> float:
        return self.cfg.eval_guidance

    def train_epoch(self, batch: RolloutBatch, epoch: int, generator: torch.Generator) -> dict[str, float]:
        cfg, policy, t_model = self.cfg, self.policy, self.policy.transformer
        n = len(batch)
        r_all = optimality_weight(batch.advantages, cfg.adv_clip_max, cfg.adv_mode, cfg.weight_form)
        train_sigmas = batch.sigmas[:-1]
        n_train_t = int(cfg.num_steps * cfg.timestep_fraction)
        if n % cfg.train_batch_size:
            raise ValueError(f"nft: {n} samples per rank per epoch not divisible by train_batch_size="
                             f"{cfg.train_batch_size}; change train_batch_size or the rollout batch arithmetic")
        chunks = micro_batches(n, cfg.train_batch_size, generator)
        if len(chunks) % cfg.steps_per_epoch:
            raise ValueError(f"nft: {len(chunks)} micro-batches per epoch not divisible by steps_per_epoch="
                             f"{cfg.steps_per_epoch}; change train_batch_size or steps_per_epoch")
        accum = len(chunks) // cfg.steps_per_epoch
        # per-sample timesteps and noise: identical whatever the micro-batching or the number of ranks
        gens = batch.generators(self.seed, epoch, salt=1)
        perms = torch.stack([torch.randperm(len(train_sigmas), generator=g) for g in gens])[:, :n_train_t]
        device = policy.device
        rows, step_rows = [], []
        for k, idx in enumerate(chunks):
            x0 = batch.x0[idx].to(device)
            cond = (batch.embeds[idx].to(device), batch.pooled[idx].to(device))
            r = r_all[idx].to(device)
            for j in range(n_train_t):
                t = train_sigmas[perms[idx, j]].to(device)
                eps = torch.stack([torch.randn(x0.shape[1:], generator=gens[i]) for i in idx.tolist()]).to(device)
                tt = t.view(-1, 1, 1, 1)
                x_t = (1 - tt) * x0 + tt * eps
                with torch.no_grad():
                    with lora.use_adapter(t_model, lora.OLD):
                        v_old = policy.velocity(x_t, t, cond, integer_timestep=False)
                    v_ref = None
                    if cfg.kl_beta > 0:
                        with lora.reference(t_model):
                            v_ref = policy.velocity(x_t, t, cond, integer_timestep=False)
                v_theta = policy.velocity(x_t, t, cond, integer_timestep=False)
                loss, info = nft_loss(x0, x_t, t, v_theta, v_old, v_ref, r, cfg.nft_beta, cfg.kl_beta,
                                      cfg.adv_clip_max, weighting=cfg.loss_weighting,
                                      negative_branch=cfg.negative_branch)
                self.backward(loss / (accum * n_train_t))
                rows.append({"loss": float(loss.detach()), "policy_loss": float(info["policy_loss"]),
                             "kl_loss": float(info["kl_loss"]),
                             "positive_loss": float(info["positive_loss"].mean()),
                             "negative_loss": float(info["negative_loss"].mean())})
            if (k + 1) % accum == 0:
                step_rows.append(self.optimizer_step())
                self.ema.update(lora.ema_decay(self.global_step))
        decay = old_policy_decay(self.global_step, cfg.decay_type)
        lora.soft_update(t_model, decay)
        passes = n * n_train_t
        return {**mean_metrics(rows), **mean_metrics(step_rows), "r_mean": float(r_all.mean()),
                "old_decay": decay, "count/train_forward": passes * (3 if cfg.kl_beta > 0 else 2),
                "count/train_backward": passes}
