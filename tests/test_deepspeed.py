"""backend=deepspeed (ZeRO over the LoRA AdamW) trains exactly like the default DDP path.

Needs DeepSpeed (``pip install 'flowrl-bench[deepspeed]'``): skipped without it, except where
``FLOWRL_REQUIRE_DEEPSPEED=1`` (CI) turns the skip into a failure. Two ranks (torchrun, gloo on CPU) train NFT on the
tiny model for 2 epochs under DDP and under ZeRO stages 1 and 2; each DeepSpeed run also stops after epoch 1 and
resumes from its checkpoint, so the optimizer state goes through the engine and Method.state_dict / load_state_dict.
Same data, same micro-batches, same AdamW math (the engine steps our torch AdamW on its flat partition) -- only the
order of float sums differs: ZeRO-2 reduce-scatters the gradients into partitions and computes the clipping norm
from per-partition sums, where the DDP path all-reduces per parameter.
That is ~1 ulp of the gradients; Adam's update m / sqrt(v) is scale-free, so it moves each update by ~1e-7 x lr
(lr = 1e-3 here) per step, and the weights (|w| <= 1) by ~1 ulp = 6e-8 (observed: 6e-8 for stage 2, 0 for stage 1).
atol 1e-6 leaves 16x headroom and still catches any real difference (a missed reduction, a wrong /world_size, lost
optimizer state on resume: all >= 1e-4 here).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.needs import need

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(tmp: Path, name: str, port: int, *overrides: str) -> dict:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    save = tmp / f"{name}.pt"
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(port), "-m", "tests.deepspeed_worker",
           str(tmp / name), str(save), *overrides]
    # the first DeepSpeed run on a machine JIT-builds its CPU shared-memory comm op (~60 s, then cached)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return torch.load(save)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> dict:
    """The reference: the same two ranks under backend=ddp (trained once for every ZeRO stage)."""
    need("deepspeed", None if importlib.util.find_spec("deepspeed") else
         "DeepSpeed is not installed: pip install 'flowrl-bench[deepspeed]' (DS_BUILD_OPS=0 on CPU machines)")
    return _torchrun(tmp_path_factory.mktemp("ddp"), "ddp", 29751, "backend=ddp")


@pytest.mark.slow
@pytest.mark.parametrize("stage,port", [(1, 29752), (2, 29753)])
def test_zero_matches_ddp_and_resumes(tmp_path, ddp, stage, port):
    ds = _torchrun(tmp_path, "ds", port, "backend=deepspeed", f"zero_stage={stage}")
    assert ddp["global_step"] == ds["global_step"] == 2
    for name in ("default", "ema"):
        assert ddp[name].keys() == ds[name].keys() and len(ddp[name]) > 0
        for k in ddp[name]:
            torch.testing.assert_close(ds[name][k], ddp[name][k], atol=1e-6, rtol=0, msg=f"{name}/{k}")
    assert any(v.abs().sum() > 0 for k, v in ds["default"].items() if "lora_B" in k)  # it really trained
    # the optimizer state is gathered from the ZeRO partitions into torch AdamW's own layout
    a, b = ddp["optimizer"], ds["optimizer"]
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert float(b["state"][i]["step"]) == float(a["state"][i]["step"]) == 2
        # ZeRO sums the ranks' gradients in another order than the all-reduce (reduce-scatter, flat buffers): LoRA
        # gradients are sums with cancellation, so an element can differ by ~1e-5 of the largest; exp_avg_sq holds
        # squares, which double that relative difference
        for key, tol in (("exp_avg", 2e-5), ("exp_avg_sq", 5e-5)):
            ref = a["state"][i][key]
            torch.testing.assert_close(b["state"][i][key], ref, rtol=0, atol=tol * float(ref.abs().max()) + 1e-30)


def test_zero3_is_refused_with_a_way_out():
    from methods.base import OptimConfig
    from methods.nft import DiffusionNFT, NFTConfig
    from rollout import lora
    from tests.tiny import tiny_policy

    policy = tiny_policy()
    lora.add_lora(policy.transformer, lora.LoraOptions(rank=4, alpha=8), seed=0)
    method = DiffusionNFT(policy, NFTConfig(), OptimConfig())
    with pytest.raises(ValueError, match="zero_stage=1 or 2"):
        method.use_backend("deepspeed", zero_stage=3)
    assert method.engine is None and method.backend == "ddp"
