"""The DeepSpeed backend of :class:`methods.base.Method` (``RunConfig.backend = "deepspeed"``): one engine over
the trainable LoRA, and its optimizer state in torch's own layout.

Only this backend needs any of this; the DDP path in ``methods/base.py`` never imports it. What it does:

- :func:`build_engine`: ``deepspeed.initialize`` over the LoRA parameters with our AdamW (ZeRO stage 0, 1 or 2);
- :class:`DeepSpeedBackend`: ``backward`` (accumulate), ``step`` (reduce, clip, AdamW, all-gather) and the
  checkpointed optimizer state. The checkpoint holds torch AdamW's layout whatever the backend, so a checkpoint
  written under one backend (or ZeRO stage, or world size) resumes under another. Under ZeRO each rank holds only
  its partition of ``exp_avg`` / ``exp_avg_sq``; the trainer checkpoints from rank 0 alone (no collective there),
  so every step gathers the full LoRA-sized state to rank 0 (CPU): one all-gather of 2 x the LoRA size per step.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def build_engine(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, max_grad_norm: float,
                 zero_stage: int):
    """A DeepSpeed engine over the trainable LoRA parameters, stepping our AdamW (ZeRO stage 0, 1 or 2).

    ``deepspeed.initialize`` directly, not accelerate's DeepSpeedPlugin: accelerate's ``backward`` must know at
    every backward whether it is the last one before the optimizer step (it calls ``engine.step()`` right after
    it), while our methods run a variable number of backward passes (micro-batches x timesteps) and only then
    decide to step; accelerate would also wrap and move the whole transformer. DeepSpeed's
    ``managed_gradient_accumulation: false`` matches our loop exactly: ``backward`` accumulates, ``step()`` is the
    boundary, so the micro-batches per step (NFT's depends on the per-rank batch) need not be known up front.

    The engine's "model" holds only the LoRA parameters (the same Parameter objects peft uses; ZeRO re-points
    their storage into its flat buffer), so the frozen base is never wrapped, cast or broadcast. Its forward is
    never called: the policy calls the transformer directly.
    """
    if zero_stage == 3:
        raise ValueError("zero_stage=3 is not supported: ZeRO-3 partitions the parameters themselves, which breaks "
                         "the per-forward peft adapter switching (default / old / reference) and the in-place "
                         "weight copies (old-policy soft update, EMA, checkpoint loads). Training state is LoRA-sized: "
                         "use zero_stage=1 or 2 (partitioned optimizer state and gradients), or backend=ddp.")
    if zero_stage not in (0, 1, 2):
        raise ValueError(f"zero_stage must be 0, 1 or 2, got {zero_stage}")
    try:
        import deepspeed
    except ImportError as e:
        raise ImportError("backend=deepspeed needs DeepSpeed: pip install 'flowrl-bench[deepspeed]'") from e
    if not dist.is_initialized():  # a single process: DeepSpeed still wants a (one-rank) process group
        for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                     ("MASTER_PORT", "29500")):
            os.environ.setdefault(k, v)
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   auto_mpi_discovery=False)

    class _LoraParams(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lora = torch.nn.ParameterList(params)

    config = {
        "train_micro_batch_size_per_gpu": 1,  # bookkeeping only: the methods batch the data themselves
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True,  # our torch AdamW: same math as the DDP path
        "steps_per_print": 2 ** 31 - 1,
    }
    engine, *_ = deepspeed.initialize(model=_LoraParams(), optimizer=optimizer, config=config,
                                      dist_init_required=False)
    return engine


class DeepSpeedBackend:
    """A method's optimizer under DeepSpeed; the state it checkpoints is torch AdamW's ``state_dict`` layout."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, max_grad_norm: float,
                 zero_stage: int):
        self.params = params
        self.template = optimizer.state_dict()["param_groups"]  # AdamW param_groups as torch lays them out
        self.engine = build_engine(params, optimizer, max_grad_norm, zero_stage)
        self.snapshot: dict | None = None  # rank 0: the full AdamW state after the last step

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the methods scale; no reduction until step()

    def step(self) -> dict[str, float]:
        """Reduce (ZeRO 2: reduce-scatter) the accumulated gradients, clip, step AdamW on this rank's partition,
        all-gather the weights; then snapshot the full optimizer state to rank 0 (collective)."""
        self.engine.step()
        self._snapshot()
        norm = self.engine.get_global_grad_norm()
        return {"grad_norm": float(norm) if norm is not None else float("nan"), "lr": self.engine.get_lr()[0]}

    def optimizer_state(self) -> dict:
        """torch AdamW's ``state_dict`` (a fresh AdamW's before the first step, and on ranks > 0)."""
        if self.snapshot is None:
            return {"state": {}, "param_groups": [dict(g) for g in self.template]}
        return self.snapshot

    def load_optimizer_state(self, saved: dict) -> None:
        """Collective: load the LoRA master weights (already copied into the parameters) and this rank's
        partition of a torch-layout AdamW state."""
        zero = self._zero()
        if zero is None:
            self.engine.optimizer.load_state_dict(saved)
        else:
            zero._restore_from_bit16_weights()  # the fp32 master partition follows the weights just loaded
            if saved["state"]:
                fp32 = zero.single_partition_of_fp32_groups[0]
                flat = {}
                for key in ("exp_avg", "exp_avg_sq"):
                    buf = torch.zeros(zero.bit16_groups_flat[0].numel(), dtype=fp32.dtype)
                    for i, off, n in self._flat_layout(zero):
                        buf[off:off + n] = saved["state"][i][key].reshape(-1)
                    flat[key] = zero.get_data_parallel_partitions(buf, 0)[_rank()].clone().to(fp32.device)
                zero.optimizer.state[fp32] = {"step": saved["state"][0]["step"].clone(), **flat}
        self._snapshot()

    # ------------------------------------------------------------------ ZeRO internals
    def _zero(self):
        """The ZeRO stage-1/2 optimizer, or None for stage 0 (the engine then steps our AdamW itself)."""
        opt = self.engine.optimizer
        return opt if hasattr(opt, "single_partition_of_fp32_groups") else None

    def _flat_layout(self, zero) -> list[tuple[int, int, int]]:
        """(index in ``params``, offset in the flat group buffer, numel) for every trainable parameter."""
        index = {id(p): i for i, p in enumerate(self.params)}
        assert len(zero.round_robin_bit16_groups) == 1, "one LoRA param group expected"
        return [(index[id(p)], off, p.numel())
                for p, off in zip(zero.round_robin_bit16_groups[0], zero.round_robin_bit16_offsets[0])]

    def _snapshot(self) -> None:
        """Collective (all ranks, after every step): rank 0 keeps the full AdamW state in torch's layout."""
        zero = self._zero()
        if zero is None:
            self.snapshot = self.engine.optimizer.state_dict() if _rank() == 0 else None
            return
        fp32 = zero.single_partition_of_fp32_groups[0]
        st = zero.optimizer.state[fp32]
        full = {}
        for key in ("exp_avg", "exp_avg_sq"):
            local = st[key].detach()
            if _world() > 1:
                parts = [torch.empty_like(local) for _ in range(_world())]
                dist.all_gather(parts, local.contiguous())
                full[key] = torch.cat(parts).cpu()
            else:
                full[key] = local.cpu()
        if _rank() != 0:
            return
        step = st["step"].detach().cpu().clone() if torch.is_tensor(st["step"]) else torch.tensor(float(st["step"]))
        state = {i: {"step": step.clone(), **{k: full[k][off:off + n].view_as(self.params[i]).clone()
                                               for k in full}} for i, off, n in self._flat_layout(zero)}
        self.snapshot = {"state": state, "param_groups": [dict(g) for g in self.template]}
