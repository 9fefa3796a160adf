"""Two ranks (torchrun, gloo on CPU) train exactly like one process with the same global batch.

The epoch's samples, their noise and their training timesteps are keyed by global sample position, advantages are
computed over the gathered epoch and gradients are averaged over ranks, so 2 x 4 images per rank must give the same
LoRA weights as 1 x 8 -- up to float summation order (the micro-batch partitions differ).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], tmp: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_two_ranks_match_one_process(tmp_path, method="nft", port=29731, extra=()):
    """NFT here; other methods' test files call this with their own ``method`` (and a free ``port``; ``extra``
    overrides for both runs)."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    _run([sys.executable, "-m", "tests.dist_worker", str(tmp_path / "r1"), str(one), f"method={method}",
          "rollout_batch_size=8", *extra], tmp_path)
    _run([torchrun, "--nproc_per_node", "2", "--master_port", str(port), "-m", "tests.dist_worker",
          str(tmp_path / "r2"), str(two), f"method={method}", "rollout_batch_size=4", *extra], tmp_path)
    a, b = torch.load(one), torch.load(two)
    assert a["default"].keys() == b["default"].keys() and len(a["default"]) > 0
    for name in ("default", "ema"):
        for k in a[name]:
            torch.testing.assert_close(a[name][k], b[name][k], atol=1e-5, rtol=0, msg=f"{name}/{k}")
    # the 2-rank run really moved the weights (not a trivial pass) and wrote one results set
    assert any(v.abs().sum() > 0 for k, v in b["default"].items() if "lora_B" in k)
    assert (tmp_path / "r2" / "dist" / "summary.json").exists()
