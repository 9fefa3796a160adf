"""Pass counts of the cost model against hand counts, and the measured counters of a real epoch."""
import pytest

from bench.config import resolve
from bench.cost import passes_per_image, predict_gpu_hours, transformer_flops_per_forward


def test_pass_counts_by_hand():
    cfg = resolve({"method": "nft", "world": "sd3", "task": "geneval"}, None, [])
    nft = passes_per_image("nft", cfg)  # 10 rollout steps, no CFG; 9 trained steps x (old + ref + theta), 9 bwd
    assert (nft.rollout_forward, nft.train_forward, nft.train_backward) == (10, 27, 9)
    grpo = passes_per_image("flowgrpo", cfg)  # CFG doubles: 20 rollout; 9 steps x 2 x (theta + ref); 18 bwd
    assert (grpo.rollout_forward, grpo.train_forward, grpo.train_backward) == (20, 36, 18)
    fast = passes_per_image("flowgrpo-fast", cfg)  # no CFG, CPS window of 3, no KL
    assert (fast.rollout_forward, fast.train_forward, fast.train_backward) == (10, 3, 3)
    assert nft.forward_equivalents == 10 + 27 + 18
    flops = transformer_flops_per_forward(1e9, 1000, 24, 10, 100)
    assert flops == pytest.approx(2e9 * 1024 + 4 * 10 * 1024**2 * 100)
    assert predict_gpu_hours("nft", cfg, 3600.0, 55.0, 1) == pytest.approx(1.0)
