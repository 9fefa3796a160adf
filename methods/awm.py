"""AWM: Advantage Weighted Matching (arXiv 2509.25050).

Reads beside the paper's algorithm (and ../shared/spec/awm.md, which records what the reference code does):

    for each epoch:
        sample K images per prompt with the CURRENT policy: SA-Solver, 14 steps, no CFG,
            tau = 0.4 where 0.3 <= t <= 0.9; keep x0 only
        A = group_advantage(reward) (global std);  a = clip(A, -5, 5) / 5        # no zero-advantage filter
        for each micro-batch of B samples:
            T stratified sampler timesteps, shared by the micro-batch
            for each (t, sample), fresh eps:  x_t = (1 - t) x0 + t eps           # the pretraining forward process
                log p = -w_t(mean((v_theta(x_t, t) - (eps - x0))^2))            # matching loss as a log-likelihood
                r = exp(log p - sg(log p))                                        # = 1 on-policy
            L = mean(max(-a r, -a clip(r, 1 - c, 1 + c)))
                + beta mean((v_theta - v_ref)^2) + ema_beta mean((v_theta - v_ema)^2)
            backward(L / n_micro)
        ONE optimizer step; EMA(theta) for evaluation; theta_ema <- d theta_ema + (1 - d) theta

The paper's plain form ``E[a ||v_theta(x_t, t) - (eps - x0)||^2]`` is ``weighting="Uniform"``, ``beta = ema_beta = 0``
and a pretraining-like ``time_type`` ("logit_normal" or "uniform"). The KL-EMA adapter ``theta_ema`` is the harness's
``old`` adapter (``lora.OLD``); unlike NFT it only anchors a penalty (and samples with ``off_policy``).

Rank invariance: every per-sample draw (training noise; "uniform" times) comes from the sample's own generator,
keyed by its global position in the epoch. A micro-batch is B consecutive global positions: the sampler has already
shuffled the epoch (``GroupedSampler.epoch_samples``), so these are the reference's shuffled micro-batches, and a
rank's shard is a whole number of them. Its shared timesteps come from a generator keyed by its first position
(``sample_generators`` salt 2), so 2 ranks x 4 images train exactly like 1 rank x 8.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from methods.base import Method, OptimConfig, RolloutBatch, RolloutSpec, mean_metrics, sample_generators
from rollout import lora

Weighting = Literal["Uniform", "t", "t**2", "huber", "ghuber"]
TimeType = Literal["discrete_wo_init", "discrete", "discrete_with_init", "logit_normal", "uniform"]
KLWeight = Literal["Uniform", "ELBO"]
LossType = Literal["exp_first", "sum_first"]


@dataclass
class AWMConfig:
    """AWM hyperparameters (defaults: the reference's GenEval config on SD3.5-Medium)."""

    solver: Literal["sa", "dpm2", "euler"] = "sa"
    """Rollout solver: SA-Solver (reference); Flow-Factory's AWM samples with the Euler ODE."""
    num_steps: int = 14
    """Sampler steps; the discrete timesteps are trained on the same sigma table."""
    guidance: float = 1.0
    """CFG at rollout (AWM: none). Training forwards never use CFG."""
    noise_level: float = 0.4
    """SA-Solver stochasticity tau (PickScore: 0, a deterministic ODE)."""
    noise_t_min: float = 0.3
    """tau applies only where noise_t_min <= t <= noise_t_max."""
    noise_t_max: float = 0.9
    """Upper end of the stochastic window."""
    off_policy: bool = False
    """Sample with the KL-EMA adapter and take the ratio against it (the reference's default is on-policy)."""
    train_batch_size: int = 3
    """B: samples per micro-batch (per rank); all of them share the micro-batch's T timesteps (PickScore: 2)."""
    train_timesteps: int = 6
    """T: timesteps per micro-batch, stratified."""
    timestep_fraction: float = 0.9
    """Discrete timesteps come from sampler indices below ``int(num_steps * timestep_fraction)``."""
    time_type: TimeType = "discrete_wo_init"
    """"discrete_wo_init" (indices 1..hi-1), "discrete" (0..hi-1: PickScore), "discrete_with_init" (index 0 plus T-1
    strata), or the paper's continuous "logit_normal" (shared by the micro-batch) and "uniform" (on [0.2, 1], per
    sample), both shifted by ``time_shift``."""
    time_shift: float = 3.0
    """Shift of the continuous time types: ``s t / (1 + (s - 1) t)``."""
    weighting: Weighting = "ghuber"
    """Matching log-prob from the per-sample MSE m: -m, -t m, -t^2 m, -t (sqrt(m) - 1e-5), or the generalised Huber
    -(t/p)((m + 1e-10)^p - 1e-10^p)."""
    ghuber_power: float = 0.25
    """p of the "ghuber" weighting."""
    loss_type: LossType = "exp_first"
    """Ratio per (t, sample) ("exp_first") or per sample from the mean log-prob over t ("sum_first")."""
    clip_range: float = 1.0
    """PPO ratio clip c: the clip is [1 - c, 1 + c] (inert on-policy, where r = 1)."""
    adv_clip_max: float = 5.0
    """Advantages clipped to [-C, C] ..."""
    advantage_max: float = 1.0
    """... then scaled by advantage_max / C, so a lies in [-advantage_max, advantage_max]; <= 0: clip only."""
    beta: float = 0.001
    """KL-to-reference coefficient on velocity (GenEval 0.001, OCR 0.003, PickScore 1e-4); 0 skips its forward."""
    ema_beta: float = 1.0
    """KL-to-EMA-adapter coefficient; 0 skips its forward (unless off_policy needs it)."""
    kl_weight: KLWeight = "Uniform"
    """Reference-KL weighting: plain velocity MSE, or "ELBO" (divided by 2 s^2, s = 0.7 sqrt(t / (1 - min(t, .99))))."""
    kl_ema_weight: KLWeight = "Uniform"
    """The same for the EMA-KL term."""
    decay_type: Literal["linear", "constant"] = "linear"
    """KL-EMA adapter decay after step s: min(kl_ema_decay, 0.001 s) ("linear") or kl_ema_decay ("constant")."""
    kl_ema_decay: float = 0.3
    """Cap (linear) or value (constant) of the KL-EMA adapter decay."""
    ema_cap: float = 0.99
    """Cap of the evaluation EMA decay min((1 + s) / (10 + s), cap), applied once per epoch."""
    eval_guidance: float = 1.0
    """CFG when evaluating the trained model (AWM: none)."""


# ------------------------------------------------------------------------------------------------ loss pieces
def matching_log_prob(v: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
                      weighting: Weighting = "ghuber", ghuber_power: float = 0.25) -> torch.Tensor:
    """Per-sample log-likelihood surrogate [N] in float64 from ``m = mean_CHW((v - (eps - x0))^2)``; ``t`` is [N]."""
    target = eps.double() - x0.double()
    m = ((v.double() - target) ** 2).mean(dim=tuple(range(1, v.ndim)))
    t = torch.as_tensor(t, device=m.device).double().reshape(-1)
    if weighting == "Uniform":
        return -m
    if weighting == "t":
        return -t * m
    if weighting == "t**2":
        return -t**2 * m
    if weighting == "huber":
        return -t * (torch.sqrt(m + 1e-10) - 1e-5)
    if weighting == "ghuber":
        p = ghuber_power
        return -(t / p) * ((m + 1e-10) ** p - 1e-10**p)
    raise ValueError(f"awm.weighting must be one of Uniform, t, t**2, huber, ghuber; got {weighting!r}")


def clip_advantages(adv: torch.Tensor, adv_clip_max: float = 5.0, advantage_max: float | None = 1.0) -> torch.Tensor:
    """``clip(A, -C, C) / C * advantage_max``, in [-advantage_max, advantage_max]; ``advantage_max`` None (or <= 0):
    the clip alone."""
    a = adv.clamp(-adv_clip_max, adv_clip_max)
    return a if advantage_max is None or advantage_max <= 0 else a / adv_clip_max * advantage_max


def _kl(v: torch.Tensor, v_other: torch.Tensor, t: torch.Tensor | None, weight: KLWeight) -> torch.Tensor:
    """``mean_{T,B}(mean_CHW((v - v_other)^2) / w)`` in float64, w = 1 or ELBO's ``2 s^2``."""
    d = ((v.double() - v_other.detach().double()) ** 2).mean(dim=tuple(range(2, v.ndim)))
    if weight == "ELBO":
        if t is None:
            raise ValueError("awm: the ELBO KL weighting needs t (the [T, B] training times)")
        t = t.double().to(d.device)
        d = d / (2 * (0.7 * torch.sqrt(t / (1 - t.clamp(max=0.99)))) ** 2)
    elif weight != "Uniform":
        raise ValueError(f"awm.kl_weight / kl_ema_weight must be Uniform or ELBO; got {weight!r}")
    return d.mean()


def awm_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor | None, advantages: torch.Tensor, v: torch.Tensor,
             v_ref: torch.Tensor | None, v_ema: torch.Tensor | None, *, t: torch.Tensor | None = None,
             clip_range: float = 1.0, adv_clip_max: float = 5.0, advantage_max: float | None = 1.0,
             beta: float = 0.001, ema_beta: float = 1.0, kl_weight: KLWeight = "Uniform",
             kl_ema_weight: KLWeight = "Uniform", loss_type: LossType = "exp_first"
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """AWM's loss on one micro-batch: clipped advantage-weighted ratio + beta KL(ref) + ema_beta KL(ema).

    ``log_prob``, ``old_log_prob`` [T, B] (old None: on-policy ``log_prob.detach()``, r = 1); ``advantages`` the
    raw [B]; ``v``, ``v_ref``, ``v_ema`` [T, B, C, H, W]; ``t`` [T, B] (ELBO weights only). A zero coefficient drops
    its term (its velocity may then be None). ``info``: policy_loss, kl_loss, ema_kl_loss, ratio (flat [T*B]; [B]
    for sum_first), clipfrac, advantages (scaled [B]).
    """
    a = clip_advantages(advantages, adv_clip_max, advantage_max).to(log_prob)
    old = log_prob.detach() if old_log_prob is None else old_log_prob.detach().to(log_prob)
    if loss_type == "exp_first":
        ratio = torch.exp(log_prob - old).reshape(-1)
        a_rows = a.repeat(log_prob.shape[0])  # row k*B + b has sample b's advantage
    elif loss_type == "sum_first":
        ratio = torch.exp(log_prob.mean(0) - old.mean(0))
        a_rows = a
    else:
        raise ValueError(f"awm.loss_type must be exp_first or sum_first; got {loss_type!r}")
    policy = torch.maximum(-a_rows * ratio, -a_rows * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()
    zero = torch.zeros((), dtype=torch.float64, device=log_prob.device)
    kl = _kl(v, v_ref, t, kl_weight) if beta > 0 else zero
    ema_kl = _kl(v, v_ema, t, kl_ema_weight) if ema_beta > 0 else zero
    loss = policy + beta * kl + ema_beta * ema_kl
    with torch.no_grad():
        info = {"policy_loss": policy.detach(), "kl_loss": kl.detach(), "ema_kl_loss": ema_kl.detach(),
                "ratio": ratio.detach(), "clipfrac": ((ratio - 1).abs() > clip_range).double().mean(),
                "advantages": a.detach()}
    return loss, info


# ------------------------------------------------------------------------------------------------ schedules
def train_timestep_indices(u: torch.Tensor, num_steps: int, train_timesteps: int = 6, timestep_fraction: float = 0.9,
                           time_type: TimeType = "discrete_wo_init") -> torch.Tensor:
    """T stratified sampler-step indices [T] from uniforms ``u`` ([T], or [T-1] for "discrete_with_init").

    ``hi = int(num_steps * timestep_fraction)``; strata ``[long(b_k), long(b_{k+1}))`` of ``b = linspace(lo, hi,
    n + 1)``, lo = 1 ("discrete_wo_init", "discrete_with_init") or 0 ("discrete"); a collapsed stratum gives its
    lower end. "discrete_with_init" puts index 0 first and stratifies the other T - 1. N = 14, T = 6:
    {1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}.
    """
    hi = int(num_steps * timestep_fraction)
    if time_type == "discrete_with_init":
        n, lo, head = train_timesteps - 1, 1, [0]
    elif time_type in ("discrete_wo_init", "discrete"):
        n, lo, head = train_timesteps, 1 if time_type == "discrete_wo_init" else 0, []
    else:
        raise ValueError(f"train_timestep_indices covers the discrete time types; {time_type!r} is continuous "
                         "(use continuous_train_times)")
    if hi < max(lo, 1) or timestep_fraction > 1:
        raise ValueError(f"awm: int(num_steps x timestep_fraction) = int({num_steps} x {timestep_fraction}) = {hi} "
                         "leaves no sampler step to train; raise num_steps or timestep_fraction (at most 1)")
    if u.shape != (n,):
        raise ValueError(f"train_timestep_indices: {time_type} needs {n} uniforms, got shape {tuple(u.shape)}")
    bnd = torch.linspace(lo, hi, n + 1)
    lower, upper = bnd[:-1].long(), bnd[1:].long()
    idx = lower + (u.float() * (upper - lower)).long()
    return torch.cat([torch.tensor(head, dtype=torch.long), idx])


def continuous_train_times(u: torch.Tensor, time_type: TimeType, time_shift: float = 3.0) -> torch.Tensor:
    """The paper's continuous times, stratified along dim 0 of ``u`` ([T] or [T, B]) and shifted:
    "logit_normal" ``sigmoid(Phi^-1(q))`` with ``t >= 0.01``, "uniform" on [0.2, 1]; ``q_k = (k + u_k) / T``."""
    steps = torch.arange(u.shape[0], dtype=torch.float32).reshape(-1, *([1] * (u.ndim - 1)))
    q = (steps + u.float()) / u.shape[0]
    if time_type == "logit_normal":
        t = torch.sigmoid(torch.distributions.Normal(0.0, 1.0).icdf(q))  # q = 0 gives t = 0, then 0.01
    elif time_type == "uniform":
        t = 0.2 + 0.8 * q
    else:
        raise ValueError(f"continuous_train_times: time_type must be logit_normal or uniform, got {time_type!r}")
    t = time_shift * t / (1 + (time_shift - 1) * t)
    return t.clamp(min=0.01) if time_type == "logit_normal" else t


def kl_ema_decay(step: int, decay_type: Literal["linear", "constant"] = "linear", kl_ema_decay: float = 0.3) -> float:
    """Decay d of the KL-EMA adapter update ``theta_ema <- d theta_ema + (1 - d) theta`` after ``step`` steps."""
    if decay_type == "linear":
        return min(kl_ema_decay, 0.001 * step)
    if decay_type == "constant":
        return kl_ema_decay
    raise ValueError(f"awm.decay_type must be linear or constant; got {decay_type!r}")


# ------------------------------------------------------------------------------------------------ method
class AWM(Method):
    name = "awm"

    def __init__(self, policy, cfg: AWMConfig, optim: OptimConfig, seed: int = 0):
        super().__init__(policy, optim, seed)
        self.cfg = cfg
        kl_ema_decay(0, cfg.decay_type)  # validate early
        if cfg.train_timesteps < 1 or cfg.train_batch_size < 1:
            raise ValueError("awm.train_timesteps and awm.train_batch_size must be at least 1")

    def rollout_spec(self, epoch: int) -> RolloutSpec:
        cfg = self.cfg
        return RolloutSpec(solver=cfg.solver, num_steps=cfg.num_steps, guidance=cfg.guidance,
                           adapter=lora.OLD if cfg.off_policy else lora.TRAINABLE, noise_level=cfg.noise_level,
                           keep_trajectory=False, integer_timestep=False,
                           sa_window=(cfg.noise_t_min, cfg.noise_t_max))

    def eval_guidance(self) -> float:
        return self.cfg.eval_guidance

    def _times(self, batch: RolloutBatch, rows: torch.Tensor, gens: list[torch.Generator], key: int,
               epoch: int) -> torch.Tensor:
        """The micro-batch's training times [T, B]: shared by its samples, except "uniform" (per sample)."""
        cfg, n_t, b = self.cfg, self.cfg.train_timesteps, len(rows)
        if cfg.time_type == "uniform":
            u = torch.stack([torch.rand(n_t, generator=gens[i]) for i in rows.tolist()], 1)
            return continuous_train_times(u, "uniform", cfg.time_shift)
        shared = sample_generators(self.seed, epoch, [key], salt=2)[0]
        u = torch.rand(n_t - 1 if cfg.time_type == "discrete_with_init" else n_t, generator=shared)
        if cfg.time_type == "logit_normal":
            t = continuous_train_times(u, "logit_normal", cfg.time_shift)
        else:
            t = batch.sigmas[train_timestep_indices(u, len(batch.sigmas) - 1, n_t, cfg.timestep_fraction,
                                                    cfg.time_type)]
        return t.float().reshape(-1, 1).expand(n_t, b)

    def train_epoch(self, batch: RolloutBatch, epoch: int, generator: torch.Generator) -> dict[str, float]:
        """One epoch: every micro-batch's loss backward / n_micro, then one optimizer step and the two EMA updates.
        ``generator`` (per rank) is not used: every draw is keyed by global sample position (module docstring)."""
        cfg, policy, t_model = self.cfg, self.policy, self.policy.transformer
        n, n_t, size = len(batch), cfg.train_timesteps, cfg.train_batch_size
        if n % size:
            raise ValueError(f"awm: {n} samples per rank per epoch not divisible by train_batch_size={size}; change "
                             "awm.train_batch_size or the rollout batch arithmetic")
        order = torch.argsort(batch.sample_ids)
        chunks = [order[i:i + size] for i in range(0, n, size)]  # B consecutive global positions each
        gens = batch.generators(self.seed, epoch, salt=1)
        need_ema = cfg.ema_beta > 0 or cfg.off_policy
        device = policy.device
        rows = []
        for idx in chunks:
            t = self._times(batch, idx, gens, int(batch.sample_ids[idx[0]]), epoch)  # [T, B]
            x0 = batch.x0[idx]
            eps = torch.stack([torch.stack([torch.randn(x0.shape[1:], generator=gens[i]) for i in idx.tolist()])
                               for _ in range(n_t)])  # [T, B, C, H, W]: each sample draws its T noises in order
            x0, eps, t = x0.to(device), eps.to(device), t.to(device)
            tt = t.reshape(n_t, -1, *([1] * (x0.ndim - 1)))
            x_t = ((1 - tt) * x0 + tt * eps).flatten(0, 1)  # row k*B + b: timestep k, sample b
            x0_rows, eps_rows, t_rows = x0.repeat(n_t, *([1] * (x0.ndim - 1))), eps.flatten(0, 1), t.reshape(-1)
            cond = (batch.embeds[idx].to(device).repeat(n_t, 1, 1), batch.pooled[idx].to(device).repeat(n_t, 1))
            with torch.no_grad():
                v_ref = v_ema = None
                if cfg.beta > 0:
                    with lora.reference(t_model):
                        v_ref = policy.velocity(x_t, t_rows, cond, integer_timestep=False)
                if need_ema:
                    with lora.use_adapter(t_model, lora.OLD):
                        v_ema = policy.velocity(x_t, t_rows, cond, integer_timestep=False)
            v = policy.velocity(x_t, t_rows, cond, integer_timestep=False)
            log_prob = matching_log_prob(v, x0_rows, eps_rows, t_rows, cfg.weighting, cfg.ghuber_power)
            old = None
            if cfg.off_policy:
                old = matching_log_prob(v_ema, x0_rows, eps_rows, t_rows, cfg.weighting, cfg.ghuber_power)
                old = old.view(n_t, -1)
            shape = (n_t, len(idx), *x0.shape[1:])
            loss, info = awm_loss(
                log_prob.view(n_t, -1), old, batch.advantages[idx].to(device), v.view(shape),
                None if v_ref is None else v_ref.view(shape), None if v_ema is None else v_ema.view(shape), t=t,
                clip_range=cfg.clip_range, adv_clip_max=cfg.adv_clip_max, advantage_max=cfg.advantage_max,
                beta=cfg.beta, ema_beta=cfg.ema_beta, kl_weight=cfg.kl_weight, kl_ema_weight=cfg.kl_ema_weight,
                loss_type=cfg.loss_type)
            self.backward(loss / len(chunks))
            rows.append({"loss": float(loss.detach()), **{k: float(info[k]) for k in
                                                           ("policy_loss", "kl_loss", "ema_kl_loss", "clipfrac")},
                         "ratio_mean": float(info["ratio"].mean())})
        step = self.optimizer_step()
        self.ema.update(lora.ema_decay(self.global_step, cap=cfg.ema_cap))
        decay = kl_ema_decay(self.global_step, cfg.decay_type, cfg.kl_ema_decay)
        lora.soft_update(t_model, decay)
        passes = n * n_t
        return {**mean_metrics(rows), **step, "kl_ema_decay": decay,
                "count/train_forward": passes * (1 + (cfg.beta > 0) + need_ema), "count/train_backward": passes}
