"""Token layouts the families' transformers take, and their inverses.

The harness keeps latents spatial (``[B, C, h, w]``); FLUX.1 and Qwen-Image feed their transformers 2 x 2 latent
patches as tokens (``[B, h/2 * w/2, 4C]``, channel-major inside a patch), FLUX.2 one token per (already
patchified) latent pixel. Qwen-Image and Z-Image encode each prompt to its own number of tokens: the harness pads them
to a fixed length with a 0/1 mask so every rollout batch stacks, and drops the padding again at the forward.
"""
from __future__ import annotations

import torch


def pack_2x2(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, (h/2)(w/2), 4C]``: token (i, j) holds patch rows 2i..2i+1, cols 2j..2j+1."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_2x2(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack_2x2` for a latent of ``h x w``."""
    b, _, d = tokens.shape
    c = d // 4
    return tokens.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def grid_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """FLUX.1's image position ids ``[h w, 3]``: (0, row, col) per token, row-major."""
    ids = torch.zeros(h, w, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(h, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(w, device=device, dtype=dtype)[None, :]
    return ids.reshape(h * w, 3)


def pad_tokens(pieces: list[torch.Tensor], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length token embeddings ``[L_i, D]`` -> ``(embeds [B, length, D], mask [B, length])``, zero-padded
    at the end (a longer piece is cut to ``length``)."""
    d = pieces[0].shape[-1]
    embeds = pieces[0].new_zeros(len(pieces), length, d)
    mask = pieces[0].new_zeros(len(pieces), length)
    for i, p in enumerate(pieces):
        n = min(len(p), length)
        embeds[i, :n] = p[:n]
        mask[i, :n] = 1
    return embeds, mask


def trim_padding(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing columns that are padding in every row (the batch's longest prompt keeps its length)."""
    n = max(int(mask.sum(1).max()), 1)
    return embeds[:, :n], mask[:, :n]
