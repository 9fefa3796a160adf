"""DGPO: Direct Group Preference Optimization (arXiv 2510.08425).

Reads beside the paper's algorithm (and ../shared/spec/dgpo.md, which records what the reference code does):

    for each epoch:
        sample K images per prompt, deterministic DPM-Solver++(2M) on Sana's flow table, CFG 4.5, with the
            current policy while step <= switch_ema_ref, then with ema_ref (the "old" adapter); keep x0 only
        A = group_advantage(reward)                                    # no zero-advantage filter
        draw M distinct steps j from the first trunc_steps + 1          # shared by every sample and rank
        for each micro-batch of whole groups, for each j:
            t = timestep_j / 1000; one eps per group; x_t = (1 - t) x0 + t eps; u = eps - x0
            d = mean (u - v_theta)^2;  d_ref, d_old likewise (base model, ema_ref; no grad)
            d~ = stopgrad(d) where exp(d_old - d) > 1 + c (A > 0) or < 1 - c (A <= 0)       # the clip
            s_G = beta_dpo / K sum_{i in G} A_i (d_i - d_ref,i)          # summed over ranks, no grad
            L = mean(sigmoid(s_G) A d~) + kl_beta mean (v_theta - v_ref)^2
        one optimizer step; ema_ref <- d ema_ref + (1 - d) theta, d = min(0.3, 0.001 s); EMA(theta) for evaluation

Per group the gradient of the policy term is, up to 1/B, that of the paper's group preference loss
``-(K / beta_dpo) log sigmoid(-s_G)``; ``loss_form="paper"`` optimises that loss itself (mean over groups).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F

from methods.base import Method, OptimConfig, RolloutBatch, RolloutSpec, derive_seed, mean_metrics, micro_batches
from rollout import lora
from rollout.advantages import group_advantages

LossForm = Literal["reference", "paper"]


@dataclass
class DGPOConfig:
    """DGPO hyperparameters (defaults: the reference's GenEval config on SD3.5-Medium, ``config/dgpo.py``)."""

    num_steps: int = 10
    """Rollout steps of DPM-Solver++(2M) on Sana's flow table (:func:`rollout_sigmas`)."""
    flow_shift: float = 3.0
    """Shift of that table."""
    rollout_guidance: float = 4.5
    """CFG at rollout (1.0 in the CFG-free configs); training forwards of theta never use CFG."""
    switch_ema_ref: int = 500
    """Sample with the current policy while optimizer steps <= this, then with ema_ref (200 for OCR and PickScore)."""
    ema_ref_rate: float = 0.001
    """ema_ref decay after optimizer step s is ``min(ema_ref_cap, ema_ref_rate * s)``."""
    ema_ref_cap: float = 0.3
    """Cap of the ema_ref decay."""
    num_train_timesteps: int = 4
    """M: distinct rollout steps trained per epoch, the same for every sample, micro-batch and rank."""
    trunc_steps: int = 4
    """The M steps are drawn from indices 0..trunc_steps (4: t 0.999..0.817; 6 for OCR and PickScore)."""
    beta_dpo: float = 100.0
    """Sharpness of the group weights sigmoid(s_G) (10 for PickScore; 2000 in the CFG-free ema_ref config)."""
    clip_range: float = 1e-2
    """c: a sample's d is detached once exp(d_old - d) leaves 1 +- c on its advantage's side (5e-2 PickScore)."""
    clip_dsm: bool = True
    """Apply the clip to the policy term."""
    clip_kl: bool = False
    """Also detach clipped samples' KL terms."""
    kl_beta: float = 0.02
    """KL coefficient on velocities against the base model (0.001 for PickScore)."""
    kl_cfg: float = 1.0
    """CFG of the base model's forward (d_ref and the KL) when > 1 (4.5 in the CFG-free config)."""
    use_ema_ref: bool = False
    """d_ref from ema_ref instead of the base model (TDM-R1's dynamic reference); the KL stays on the base model."""
    adv_clip_max: float = 5.0
    """Advantages clipped to [-C, C]."""
    global_std: bool = False
    """Advantage scale: each group's own std (GenEval) or the std of all the epoch's rewards (OCR, PickScore)."""
    loss_form: LossForm = "reference"
    """"reference": the sigmoid-weighted velocity MSE; "paper": ``mean_groups(-log sigmoid(-s_G))`` with s_G
    differentiable (the paper also drops the clip and the KL: clip_dsm=false, kl_beta=0)."""
    train_batch_size: int = 16
    """Samples per micro-batch per rank, taken in sampling order (reference: one sampling batch). Every micro-batch,
    over all ranks, must hold whole prompt groups."""
    ema_every: int = 8
    """Evaluation EMA applied when (optimizer steps + 1) % ema_every == 0, after every micro-batch (as FlowGRPO)."""
    eval_guidance: float = 4.5
    """CFG when evaluating the trained model (the rollout's; 1.0 for the CFG-free configs)."""


def rollout_sigmas(num_steps: int, shift: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigmas float32 [N + 1] ending in 0, timesteps int64 [N])`` of diffusers' ``DPMSolverMultistepScheduler`` as
    Sana's "flow-dpm_solver" sets it (N = 10: sigma_0 = 0.99967, timesteps 999, 963, ..., 428, 249)."""
    from diffusers import DPMSolverMultistepScheduler

    if num_steps < 1:
        raise ValueError(f"dgpo.num_steps must be >= 1, got {num_steps}")
    scheduler = DPMSolverMultistepScheduler(
        flow_shift=shift, use_flow_sigmas=True, prediction_type="flow_prediction", algorithm_type="dpmsolver++",
        solver_order=2, solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero")
    with warnings.catch_warnings():  # diffusers' own numpy 2 deprecation, not ours to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        scheduler.set_timesteps(num_steps)
    return scheduler.sigmas.to(torch.float32).clone(), scheduler.timesteps.to(torch.int64).clone()


def ema_ref_decay(step: int, rate: float = 0.001, cap: float = 0.3) -> float:
    """Decay d of ``ema_ref <- d ema_ref + (1 - d) theta`` at the optimizer step after ``step`` earlier ones."""
    return min(cap, rate * step)


def train_step_indices(seed: int, epoch: int, trunc_steps: int, count: int) -> list[int]:
    """The epoch's M distinct rollout-step indices from ``0..trunc_steps``, in random order, keyed by (seed, epoch)."""
    g = torch.Generator().manual_seed(derive_seed(seed, epoch, 2))
    return torch.randperm(trunc_steps + 1, generator=g)[:count].tolist()


def dgpo_loss(target: torch.Tensor, v_theta: torch.Tensor, v_ref: torch.Tensor, v_old: torch.Tensor | None,
              adv: torch.Tensor, group_ids: torch.Tensor, group_size: int, beta_dpo: float = 100.0,
              clip_range: float = 1e-2, kl_beta: float = 0.02, adv_clip_max: float = 5.0, *,
              v_kl_ref: torch.Tensor | None = None, clip_dsm: bool = True, clip_kl: bool = False,
              num_groups: int | None = None, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
              loss_form: LossForm = "reference") -> tuple[torch.Tensor, dict]:
    """DGPO's loss on one micro-batch at one timestep.

    ``target`` = eps - x0 and the velocities are [B, C, H, W]; ``adv`` [B] (clipped here), ``group_ids`` int64 [B]
    in ``[0, num_groups)``; ``group_size`` = K, the divisor of s_G. ``v_ref`` gives d_ref, ``v_kl_ref`` the KL
    (None: ``v_ref``). ``reduce(partial)`` is called once with this rank's per-group sums [num_groups] and returns
    the sums over ranks (None: this rank's). ``info``: dsm, ratio, clipped (None without ``v_old``), group_sums,
    weight, policy_loss, kl_loss (unscaled), clip_frac.
    """
    if loss_form not in ("reference", "paper"):
        raise ValueError(f"dgpo.loss_form must be 'reference' or 'paper', got {loss_form!r}")
    if v_old is None and (clip_dsm or clip_kl):
        raise ValueError("dgpo_loss: clip_dsm / clip_kl need v_old (the old policy's velocity); pass it or set both "
                         "False")
    dims = tuple(range(1, target.ndim))
    a = adv.to(v_theta.dtype).clamp(-adv_clip_max, adv_clip_max)
    d = ((target - v_theta) ** 2).mean(dim=dims)
    with torch.no_grad():
        d_ref = ((target - v_ref) ** 2).mean(dim=dims)
        ratio = clipped = None
        if v_old is not None:
            ratio = torch.exp(((target - v_old) ** 2).mean(dim=dims) - d)
            clipped = torch.where(a > 0, ratio > 1 + clip_range, ratio < 1 - clip_range)
    d_c = torch.where(clipped, d.detach(), d) if clip_dsm else d
    groups = int(group_ids.max()) + 1 if num_groups is None else num_groups
    if group_ids.min() < 0 or group_ids.max() >= groups:
        raise ValueError(f"dgpo_loss: group_ids must lie in [0, {groups}), got {group_ids.tolist()}")
    per_sample = a * beta_dpo * (d_c - d_ref) / group_size
    local = torch.zeros(groups, dtype=d.dtype, device=d.device).index_add(0, group_ids, per_sample)
    sums = local.detach() if reduce is None else reduce(local.detach())
    weight = torch.sigmoid(sums)[group_ids]
    if loss_form == "reference":
        policy = (weight * a * d_c).mean()
    else:  # value: the global s_G; gradient: through this rank's share (summed over ranks by the gradient mean)
        s = local + (sums - local).detach()
        here = torch.zeros(groups, dtype=torch.bool, device=d.device)
        here[group_ids] = True
        policy = group_size / len(d) * F.softplus(s[here]).sum()
    if kl_beta > 0:
        kl_each = ((v_theta - (v_ref if v_kl_ref is None else v_kl_ref).detach()) ** 2).mean(dim=dims)
        kl = (torch.where(clipped, kl_each.detach(), kl_each) if clip_kl else kl_each).mean()
    else:
        kl = torch.zeros((), dtype=d.dtype, device=d.device)
    info = {"dsm": d.detach(), "ratio": ratio, "clipped": clipped, "group_sums": sums, "weight": weight,
            "policy_loss": policy.detach(), "kl_loss": kl.detach(),
            "clip_frac": clipped.float().mean() if clipped is not None else torch.zeros((), device=d.device)}
    return policy + kl_beta * kl, info


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks (a copy)."""
    out = x.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


class DGPO(Method):
    name = "dgpo"

    def __init__(self, policy, cfg: DGPOConfig, optim: OptimConfig, seed: int = 0):
        super().__init__(policy, optim, seed)
        self.cfg = cfg
        if cfg.loss_form not in ("reference", "paper"):
            raise ValueError(f"dgpo.loss_form must be 'reference' or 'paper', got {cfg.loss_form!r}")
        if not 0 <= cfg.trunc_steps < cfg.num_steps:
            raise ValueError(f"dgpo.trunc_steps={cfg.trunc_steps} must lie in [0, num_steps - 1 = {cfg.num_steps - 1}]")
        if not 1 <= cfg.num_train_timesteps <= cfg.trunc_steps + 1:
            raise ValueError(f"dgpo.num_train_timesteps={cfg.num_train_timesteps} distinct steps must be between 1 and "
                             f"trunc_steps + 1 = {cfg.trunc_steps + 1}; lower it or raise dgpo.trunc_steps")
        self.sigmas, self.timesteps = rollout_sigmas(cfg.num_steps, cfg.flow_shift)
        self.reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
        """How per-group sums are summed over ranks (None: all-reduce when distributed); tests set their own."""

    def rollout_spec(self, epoch: int) -> RolloutSpec:
        adapter = lora.TRAINABLE if self.global_step <= self.cfg.switch_ema_ref else lora.OLD
        return RolloutSpec(solver="dpm2", num_steps=self.cfg.num_steps, guidance=self.cfg.rollout_guidance,
                           adapter=adapter, keep_trajectory=False, sigmas=self.sigmas, timesteps=self.timesteps,
                           whole_groups=True)

    def eval_guidance(self) -> float:
        return self.cfg.eval_guidance

    def advantages(self, rewards: torch.Tensor, prompts: list[str], sample_ids: torch.Tensor) -> torch.Tensor:
        return group_advantages(rewards, prompts, global_std=self.cfg.global_std)

    def groups(self, batch: RolloutBatch, chunks: list[torch.Tensor]) -> tuple[torch.Tensor, int, int]:
        """(group index of each sample [N] in [0, G), G, K) over all ranks' samples, checking that every micro-batch
        (over all ranks) holds whole groups. Groups are the sampler's prompt draws (``batch.group_ids``), else the
        prompt texts."""
        labels = batch.group_ids.tolist() if batch.group_ids is not None else list(batch.prompts)
        mb = [0] * len(batch)
        for k, idx in enumerate(chunks):
            for i in idx.tolist():
                mb[i] = k
        rows = list(zip(labels, mb))
        if _world() > 1:
            parts = [None] * _world()
            dist.all_gather_object(parts, rows)
            rows = [r for part in parts for r in part]
        members: dict = {}
        for label, k in rows:
            members.setdefault(label, []).append(k)
        for label, found in members.items():
            if len(set(found)) > 1:
                raise ValueError(f"dgpo: the {len(found)} samples of group {label!r} fall in training micro-batches "
                                 f"{sorted(set(found))}; every micro-batch (over all ranks) must hold whole groups: "
                                 "set dgpo.train_batch_size to rollout_batch_size (or a multiple of it)")
        sizes = sorted({len(found) for found in members.values()})
        if len(sizes) > 1:
            raise ValueError(f"dgpo: groups of unequal sizes {sizes}; every group needs images_per_prompt samples")
        index = {label: g for g, label in enumerate(sorted(members))}
        return torch.tensor([index[label] for label in labels]), len(index), sizes[0]

    def _group_noise(self, groups: list[int], shape, epoch: int, step: int) -> torch.Tensor:
        """One eps per group, keyed by (seed, epoch, group, step): the same for its samples on any rank."""
        seeds = {g: derive_seed(self.seed, epoch, g, step, 3) for g in dict.fromkeys(groups)}
        noise = {g: torch.randn(shape, generator=torch.Generator().manual_seed(s)) for g, s in seeds.items()}
        return torch.stack([noise[g] for g in groups])

    def train_epoch(self, batch: RolloutBatch, epoch: int, generator: torch.Generator) -> dict[str, float]:
        cfg, policy, t_model = self.cfg, self.policy, self.policy.transformer
        n = len(batch)
        if n % cfg.train_batch_size:
            raise ValueError(f"dgpo: {n} samples per rank per epoch not divisible by train_batch_size="
                             f"{cfg.train_batch_size}; set dgpo.train_batch_size to rollout_batch_size")
        chunks = micro_batches(n, cfg.train_batch_size)  # sampling order, no shuffling
        group_ids, num_groups, k_size = self.groups(batch, chunks)
        steps = train_step_indices(self.seed, epoch, cfg.trunc_steps, cfg.num_train_timesteps)
        reduce = self.reduce if self.reduce is not None else (all_reduce_sum if _world() > 1 else None)
        need_base = not cfg.use_ema_ref or cfg.kl_beta > 0
        need_old = cfg.clip_dsm or cfg.clip_kl or cfg.use_ema_ref
        base_cfg = cfg.kl_cfg if cfg.kl_cfg > 1 else 1.0
        device = policy.device
        rows, step_rows, decay = [], [], 0.0
        for k, idx in enumerate(chunks):
            x0 = batch.x0[idx].to(device)
            cond = (batch.embeds[idx].to(device), batch.pooled[idx].to(device))
            adv, gid = batch.advantages[idx].to(device), group_ids[idx].to(device)
            for j in steps:
                timestep = self.timesteps[j].to(device)
                t = timestep.to(torch.float32) / 1000
                eps = self._group_noise(group_ids[idx].tolist(), x0.shape[1:], epoch, j).to(device)
                x_t = (1 - t) * x0 + t * eps
                with torch.no_grad():
                    v_base = v_old = None
                    if need_base:
                        with lora.reference(t_model):
                            v_base = policy.velocity(x_t, t, cond, guidance=base_cfg, timestep=timestep)
                    if need_old:
                        with lora.use_adapter(t_model, lora.OLD):
                            v_old = policy.velocity(x_t, t, cond, timestep=timestep)
                v_theta = policy.velocity(x_t, t, cond, timestep=timestep)
                loss, info = dgpo_loss(eps - x0, v_theta, v_old if cfg.use_ema_ref else v_base, v_old, adv, gid,
                                       k_size, cfg.beta_dpo, cfg.clip_range, cfg.kl_beta, cfg.adv_clip_max,
                                       v_kl_ref=v_base, clip_dsm=cfg.clip_dsm, clip_kl=cfg.clip_kl,
                                       num_groups=num_groups, reduce=reduce, loss_form=cfg.loss_form)
                self.backward(loss / (len(chunks) * len(steps)))
                rows.append({"loss": float(loss.detach()), "policy_loss": float(info["policy_loss"]),
                             "kl_loss": float(info["kl_loss"]), "clip_frac": float(info["clip_frac"]),
                             "weight_mean": float(info["weight"].mean())})
            if k == len(chunks) - 1:  # one optimizer step per epoch, then ema_ref follows theta
                step_rows.append(self.optimizer_step())
                decay = ema_ref_decay(self.global_step - 1, cfg.ema_ref_rate, cfg.ema_ref_cap)
                lora.soft_update(t_model, decay)
            if (self.global_step + 1) % cfg.ema_every == 0:
                self.ema.update(lora.ema_decay(self.global_step))
        passes = n * len(steps)
        forwards = 1 + (2 if base_cfg > 1 else 1) * need_base + need_old
        return {**mean_metrics(rows), **mean_metrics(step_rows), "ema_ref_decay": decay,
                "zero_adv_frac": float((batch.advantages == 0).float().mean()),
                "count/train_forward": passes * forwards, "count/train_backward": passes}
