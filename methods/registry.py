"""Method registry: a new method is one file plus one entry here.

Each entry names the method class, its config class and the field of :class:`bench.config.RunConfig` that holds
its config, plus fixed overrides that define a variant (``flowgrpo-fast`` is FlowGRPO with a CPS window,
``grpo-guard`` FlowGRPO with RatioNorm, ``tempflow-grpo`` FlowGRPO with branching in its own loop).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from methods.awm import AWM, AWMConfig
from methods.base import Method, OptimConfig
from methods.cfg import CFGBaseline, CFGConfig
from methods.dgpo import DGPO, DGPOConfig
from methods.flowgrpo import FlowGRPO, FlowGRPOConfig
from methods.nft import DiffusionNFT, NFTConfig
from methods.tempflow import TempFlowGRPO


@dataclass(frozen=True)
class MethodEntry:
    cls: type[Method]
    config_cls: type
    config_field: str
    variant: dict = field(default_factory=dict)
    """Overrides on the method's config that define this variant."""


REGISTRY: dict[str, MethodEntry] = {
    "nft": MethodEntry(DiffusionNFT, NFTConfig, "nft"),
    "flowgrpo": MethodEntry(FlowGRPO, FlowGRPOConfig, "flowgrpo"),
    # reference configs geneval_sd3_fast_nocfg / pickscore_sd3_fast_nocfg: CPS window of 3 in the first half
    "flowgrpo-fast": MethodEntry(FlowGRPO, FlowGRPOConfig, "flowgrpo", dict(
        solver="cps", noise_level=0.8, clip_range=1e-5, kl_beta=0.0, sde_window=3, guidance=1.0, eval_guidance=1.0)),
    # GRPO-Guard, reference config/grpo_guard.py (geneval / ocr): RatioNorm + gradient reweight, clip 2e-6, no KL,
    # each group's own std (its lr 1e-4 is the paper-scale method preset, bench.config.METHOD_PRESETS)
    "grpo-guard": MethodEntry(FlowGRPO, FlowGRPOConfig, "flowgrpo", dict(
        ratio_norm=True, grad_reweight=True, clip_range=2e-6, kl_beta=0.0, global_std=False)),
    # TempFlow-GRPO, reference geneval_sd3_pr: 6 SDE branches per trained step, noise-aware weights, seed groups with
    # their own std, the older KL form with its 10x smaller beta
    "tempflow-grpo": MethodEntry(TempFlowGRPO, FlowGRPOConfig, "flowgrpo", dict(
        branches=6, step_weight="noise_aware", adv_group="seed", global_std=False, kl_form="std_dt", kl_beta=0.004)),
    "awm": MethodEntry(AWM, AWMConfig, "awm"),
    "dgpo": MethodEntry(DGPO, DGPOConfig, "dgpo"),
    # DGPO's CFG-free configs (README mode 2, GenEval values): config/dgpo_wocfg.py (CFG moved into the base model's
    # forward) and config/dgpo_wocfg_emaref.py (ema_ref as the DPO reference)
    "dgpo-wocfg": MethodEntry(DGPO, DGPOConfig, "dgpo", dict(
        rollout_guidance=1.0, eval_guidance=1.0, kl_cfg=4.5, clip_range=1e-3)),
    "dgpo-wocfg-emaref": MethodEntry(DGPO, DGPOConfig, "dgpo", dict(
        rollout_guidance=1.0, eval_guidance=1.0, kl_cfg=1.0, beta_dpo=2000.0, clip_range=1e-5, use_ema_ref=True,
        kl_beta=0.001)),
    "cfg": MethodEntry(CFGBaseline, CFGConfig, "cfg"),
}


def method_config(name: str, base):
    """The method's config for variant ``name``: the variant's settings on top of ``base``.

    For a plain section; :func:`bench.config.resolve` already applies variants (under the user's overrides) to a
    run's config, so do not call this again on a resolved one."""
    entry = get(name)
    return replace(base, **entry.variant) if entry.variant else base


def get(name: str) -> MethodEntry:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(REGISTRY)}")
    return REGISTRY[name]


def build_method(name: str, policy, method_cfg, optim: OptimConfig, seed: int) -> Method:
    entry = get(name)
    method = entry.cls(policy, method_cfg, optim, seed=seed)
    method.name = name
    return method
