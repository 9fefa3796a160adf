"""The interface every method implements, and the pieces they share.

A method (one file each, registered in :mod:`methods.registry`):

1. declares how to roll out (:class:`RolloutSpec`: solver, steps, guidance, which adapter samples, whether to keep
   the trajectory) -- the trainer performs the rollout with the shared core;
2. turns an epoch's :class:`RolloutBatch` (with rewards and group advantages) into optimizer steps
   (:meth:`Method.train_epoch`), returning metrics with shared names where they mean the same thing
   (``loss``, ``policy_loss``, ``kl_loss``, ``grad_norm``, ``lr``);
3. owns its state for checkpoints (:meth:`Method.state_dict`), including the EMA used for evaluation.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist

from rollout import lora
from rollout.advantages import group_advantages
from rollout.families.base import FlowPolicy
from rollout.samplers import Solver

Backend = Literal["ddp", "deepspeed"]


@dataclass
class OptimConfig:
    """AdamW on the trainable LoRA (references: lr 3e-4, betas (0.9, 0.999), wd 1e-4, eps 1e-8, constant lr)."""

    lr: float = 3e-4
    """Learning rate (constant)."""
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 1e-4
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    """Gradient-norm clip before every optimizer step."""


@dataclass
class RolloutSpec:
    """How the trainer samples an epoch for a method."""

    solver: Solver
    num_steps: int
    guidance: float
    adapter: Literal["default", "old"]
    """Which LoRA adapter samples: NFT samples with the soft-updated ``old`` policy, FlowGRPO with the current one."""
    noise_level: float = 0.7
    keep_trajectory: bool = False
    sde_window: tuple[int, int] | None = None
    integer_timestep: bool = True
    """Transformer timestep at sampling: truncated int (NFT reference) or float (FlowGRPO reference)."""
    keep_means: bool = False
    """Also keep each step's mean (GRPO-Guard's old-policy means, ``RolloutBatch.means``)."""
    branches: int = 0
    """> 0: TempFlow-GRPO's branching rollout (``rollout.samplers.sample_branches``) with this many SDE branches per
    branch point; the batch then has one row per branch and 2-D rewards and advantages [rows, branch points]."""
    branch_points: int | None = None
    """With ``branches``: branch at the first this many steps (None: every step but the last)."""
    sa_window: tuple[float, float] = (0.3, 0.9)
    """Solver "sa" (AWM): ``noise_level`` applies where ``sa_window[0] <= t <= sa_window[1]``, tau = 0 elsewhere."""
    sigmas: torch.Tensor | None = None
    """The sigma table [num_steps + 1] ending in 0 (DGPO: Sana's DPM-Solver table); None = the model's scheduler's."""
    timesteps: torch.Tensor | None = None
    """With ``sigmas``: the transformer's timestep at each step [num_steps], fed as given (DGPO: the scheduler's
    integers) instead of being derived from sigma."""
    whole_groups: bool = False
    """Lay the epoch out so that every sampling step (all ranks) holds whole prompt groups
    (:meth:`rollout.prompts.GroupedSampler.batch_positions`); DGPO trains on group-complete micro-batches."""


@dataclass
class RolloutBatch:
    """One rank's share of an epoch's rollout, with rewards and advantages filled in by the trainer."""

    prompts: list[str]
    metadata: list[dict]
    embeds: torch.Tensor
    pooled: torch.Tensor
    x0: torch.Tensor  # final clean latents [N, C, H, W]
    sigmas: torch.Tensor  # the sampler's sigma table [T + 1]
    latents: torch.Tensor | None = None  # [N, T, C, H, W] step inputs (SDE methods)
    next_latents: torch.Tensor | None = None  # [N, T, C, H, W] step outputs
    log_probs: torch.Tensor | None = None  # [N, T]
    stochastic: list[bool] = field(default_factory=list)
    rewards: dict[str, torch.Tensor] = field(default_factory=dict)  # [N] each ([N, T] for a branching rollout)
    advantages: torch.Tensor | None = None  # [N] ([N, T] for a branching rollout)
    sample_ids: torch.Tensor | None = None  # [N] position of each sample in the epoch (over all ranks; a branch
    # row has its trunk sample's)
    means: torch.Tensor | None = None  # [N, T, C, H, W] step means of the sampling policy (``keep_means``)
    group_ids: torch.Tensor | None = None  # [N] each sample's group: which of the epoch's prompt draws it is of
    # (``GroupedSampler.epoch_groups``; a prompt text can repeat in a set, so texts do not identify groups)

    def generators(self, seed: int, epoch: int, salt: int, idx: torch.Tensor | None = None) -> list[torch.Generator]:
        """One generator per sample, keyed by (seed, epoch, global sample position, salt): per-sample randomness
        that does not depend on batch composition or on the number of ranks."""
        return sample_generators(seed, epoch, self.sample_ids if idx is None else self.sample_ids[idx], salt)

    def __len__(self) -> int:
        return len(self.prompts)


def derive_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (Python's hash() of strings changes per process)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def sample_generators(seed: int, epoch: int, ids, salt: int) -> list[torch.Generator]:
    """One generator per sample, keyed by (seed, epoch, global sample position, salt). Salt 0: rollout noise;
    salt 1: training noise and timesteps."""
    return [torch.Generator().manual_seed(derive_seed(seed, epoch, int(i), salt)) for i in ids]


class Method(ABC):
    """Base class: holds the policy, the optimizer over the ``default`` adapter and the EMA."""

    name: str = "method"
    trains: bool = True

    def __init__(self, policy: FlowPolicy, optim: OptimConfig, seed: int = 0):
        self.policy = policy
        self.optim_cfg = optim
        self.seed = seed
        self.global_step = 0
        self.params = lora.trainable_parameters(policy.transformer) if self.trains else []
        self.optimizer = (torch.optim.AdamW(self.params, lr=optim.lr, betas=(optim.beta1, optim.beta2),
                                            weight_decay=optim.weight_decay, eps=optim.eps) if self.params else None)
        self.ema = lora.EMA(policy.transformer) if self.trains else None
        # fp16 autocast on GPU (the references' precision) needs loss scaling; a no-op in fp32 and on CPU
        fp16 = policy.options.autocast_dtype == torch.float16 and policy.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16 and bool(self.params))
        self.backend: Backend = "ddp"
        self.deepspeed = None  # methods.zero.DeepSpeedBackend (backend "deepspeed" only)

    def use_backend(self, backend: Backend, zero_stage: int = 2) -> None:
        """Select how gradients are averaged and the optimizer steps (``RunConfig.backend`` / ``zero_stage``).

        "ddp" (default) keeps the plain path of :meth:`optimizer_step`. "deepspeed" wraps the LoRA AdamW in a
        DeepSpeed engine (ZeRO stage 0, 1 or 2); call it once, after construction and before training or
        :meth:`load_state_dict`, on every rank.
        """
        if backend == "ddp" or not self.params:
            return
        if backend != "deepspeed":
            raise ValueError(f"backend must be 'ddp' or 'deepspeed', got {backend!r}")
        if self.deepspeed is not None:
            raise RuntimeError("use_backend('deepspeed') was already called for this method")
        from methods.zero import DeepSpeedBackend

        self.deepspeed = DeepSpeedBackend(self.params, self.optimizer, self.optim_cfg.max_grad_norm, zero_stage)
        self.backend = "deepspeed"

    @property
    def engine(self):
        """The DeepSpeed engine over the trainable LoRA, or None under DDP."""
        return self.deepspeed.engine if self.deepspeed is not None else None

    # ------------------------------------------------------------------ interface
    @abstractmethod
    def rollout_spec(self, epoch: int) -> RolloutSpec:
        ...

    @abstractmethod
    def train_epoch(self, batch: RolloutBatch, epoch: int, generator: torch.Generator) -> dict[str, float]:
        ...

    def eval_guidance(self) -> float:
        """CFG scale used when this method's model is evaluated (the method's own protocol)."""
        return 1.0

    def advantages(self, rewards: torch.Tensor, prompts: list[str], sample_ids: torch.Tensor) -> torch.Tensor:
        """Advantages of the gathered epoch (all ranks, in rank order): per prompt group, global std (default)."""
        return group_advantages(rewards, prompts, global_std=True)

    def eval_context(self):
        """Evaluation and checkpoints use the EMA weights (swapped in, then back)."""
        return self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        t = self.policy.transformer
        return {
            "global_step": self.global_step,
            "default": {k: v.detach().clone() for k, v in lora.adapter_params(t, lora.TRAINABLE).items()},
            "old": {k: v.detach().clone() for k, v in lora.adapter_params(t, lora.OLD).items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": (self.deepspeed.optimizer_state() if self.deepspeed is not None
                          else self.optimizer.state_dict() if self.optimizer is not None else None),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        t = self.policy.transformer
        self.global_step = state["global_step"]
        with torch.no_grad():
            for name in (lora.TRAINABLE, lora.OLD):
                for k, p in lora.adapter_params(t, name).items():
                    p.copy_(state[name][k])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.deepspeed is not None:
            self.deepspeed.load_optimizer_state(state["optimizer"])
        elif self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])

    # ------------------------------------------------------------------ shared step
    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradients of ``loss`` (already divided by the passes per step) into the LoRA."""
        if self.deepspeed is not None:
            self.deepspeed.backward(loss)
        else:
            self.scaler.scale(loss).backward()

    def optimizer_step(self) -> dict[str, float]:
        """All-reduce LoRA gradients over ranks (mean, as DDP), clip, AdamW step, zero grads.

        Under DeepSpeed the engine does the same: reduce (ZeRO 2: reduce-scatter) the gradients accumulated by
        :meth:`backward`, clip to ``max_grad_norm``, step AdamW on this rank's partition, all-gather the weights.
        """
        if self.deepspeed is not None:
            self.global_step += 1
            return self.deepspeed.step()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad.div_(dist.get_world_size())
        # unscale after the all-reduce: an inf on any rank reaches every rank, so all skip the step together
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.optim_cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return {"grad_norm": float(grad_norm), "lr": self.optimizer.param_groups[0]["lr"]}


def micro_batches(n: int, size: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Indices of ``n`` samples split into micro-batches of ``size`` (shuffled when a generator is given)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return [order[i:i + size] for i in range(0, n, size)]


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / sum(1 for r in rows if k in r) for k in sorted(keys)}
