"""Group-relative advantages, shared by DiffusionNFT and FlowGRPO.

``A = (R - mean_group(R)) / (std + 1e-4)`` where groups are keyed by prompt over the *whole epoch* (all ranks,
all sampling batches). By default the std is the population std (ddof 0) over all rewards of the epoch ("global
std"); ``global_std=False`` uses each group's own population std, so a singleton group gets advantage 0.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import torch

EPS = 1e-4


def group_advantages(rewards: torch.Tensor, prompt_ids: Sequence[Hashable] | torch.Tensor,
                     global_std: bool = True) -> torch.Tensor:
    """Advantages [N] (float64 arithmetic, returned in the rewards' float dtype or float32 if integer)."""
    r = torch.as_tensor(rewards).reshape(-1)
    keys = prompt_ids.reshape(-1).tolist() if torch.is_tensor(prompt_ids) else list(prompt_ids)
    if len(keys) != r.numel():
        raise ValueError(f"group_advantages: {r.numel()} rewards but {len(keys)} prompt ids")
    r64 = r.to(torch.float64)
    index: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys):
        index.setdefault(k, []).append(i)
    adv = torch.empty_like(r64)
    global_scale = r64.std(unbiased=False) + EPS
    for idx in index.values():
        g = r64[idx]
        scale = global_scale if global_std else g.std(unbiased=False) + EPS
        adv[idx] = (g - g.mean()) / scale
    out_dtype = r.dtype if r.is_floating_point() else torch.float32
    return adv.to(out_dtype)
