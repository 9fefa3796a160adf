"""CFG baselines: the base model, untrained, evaluated at a fixed guidance (1.0 and 4.5 in Table 1).

No rollout and no training: the trainer only runs the shared evaluation protocol at epoch 0, so the baseline rows
come out of exactly the code that evaluates the trained methods.
"""
from __future__ import annotations

from dataclasses import dataclass

from methods.base import Method, OptimConfig, RolloutSpec


@dataclass
class CFGConfig:
    guidance: float = 4.5
    """Classifier-free guidance scale of the baseline (1.0 = no CFG)."""
    num_steps: int = 40
    """Euler steps of the evaluation (paper scale: 40; the shapes world uses its own eval steps)."""


class CFGBaseline(Method):
    name = "cfg"
    trains = False

    def __init__(self, policy, cfg: CFGConfig, optim: OptimConfig | None = None, seed: int = 0):
        super().__init__(policy, optim or OptimConfig(), seed)
        self.cfg = cfg

    def rollout_spec(self, epoch: int) -> RolloutSpec:
        return RolloutSpec(solver="euler", num_steps=self.cfg.num_steps, guidance=self.cfg.guidance, adapter="default")

    def eval_guidance(self) -> float:
        return self.cfg.guidance

    def train_epoch(self, batch, epoch, generator):
        raise RuntimeError("the CFG baseline does not train; the trainer only evaluates it")
