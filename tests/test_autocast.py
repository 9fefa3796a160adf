"""Every training method runs under autocast: the reduced-precision path of GPU runs, exercised on CPU with bf16.

The references train SD3.5-M in fp16 autocast over fp32 weights; the harness does the same on GPU
(``PolicyOptions.autocast_dtype``, ``meta.json: precision``). CI has no GPU, so this checks the same code path with
CPU bf16 autocast: the transformer's matmuls run in bf16 both while sampling and while training, the loss stays
finite, the LoRA weights stay fp32 and move, and the run's records say which precision produced them.
(fp16 with the GradScaler is CUDA-only and is not exercised here.)
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from bench.records import load_results
from bench.trainer import Trainer
from rollout import lora
from tests.tiny import tiny_config, tiny_policy

METHODS = ["nft", "flowgrpo", "awm", "dgpo", "tempflow-grpo", "grpo-guard"]


@pytest.mark.parametrize("method", METHODS)
def test_one_epoch_under_bf16_autocast(tmp_path, method):
    policy = tiny_policy()
    policy.options.autocast_dtype = torch.bfloat16
    seen = {True: set(), False: set()}  # grad enabled (training) / disabled (sampling) -> output dtypes of a Linear
    linear = next(m for m in policy.transformer.modules() if type(m) is torch.nn.Linear)
    linear.register_forward_hook(lambda mod, args, out: seen[torch.is_grad_enabled()].add(out.dtype))

    tr = Trainer(tiny_config(method, tmp_path, epochs=1), policy=policy)
    before = {id(p): p.detach().clone() for p in lora.trainable_parameters(policy.transformer)}
    result = tr.run()

    assert seen[False] == {torch.bfloat16}, f"sampling ran in {seen[False]}, not bf16 autocast"
    assert seen[True] == {torch.bfloat16}, f"training forwards ran in {seen[True]}, not bf16 autocast"
    params = lora.trainable_parameters(policy.transformer)
    assert params and all(p.dtype == torch.float32 for p in params), "LoRA weights must stay fp32 under autocast"
    moved = max((p.detach() - before[id(p)]).abs().max().item() for p in params)
    assert moved > 0, "one epoch under autocast left every LoRA weight unchanged"

    df = load_results(tmp_path)
    losses = df[df.key == "train/loss"].value
    assert len(losses) and all(math.isfinite(v) for v in losses), losses.tolist()
    meta = json.loads((tmp_path / result["run_id"] / "meta.json").read_text())
    assert meta["precision"] == "bf16-autocast"
