"""Dense block-causal attention: the (b, 1, N, N) mask the model used before, kept as a reference.

Only tests and bench/bench_long.py use it (PyraTok's next-scale transformer never builds N x N):
`model(level_inputs, text, mask, layout=DenseBlockCausal)` must match the per-level path.
"""
from __future__ import annotations

from typing import Sequence

import torch
from einops import rearrange

from .attention import LevelAttention, attention


def block_causal_mask(level_sizes: Sequence[int], prefix_len: int = 0, device=None) -> torch.Tensor:
    """(n, n) bool, True = query row may attend key column; n = prefix_len + sum(level_sizes).

    Prefix (text) tokens see the prefix only; a token of level l sees the prefix and every
    token of levels <= l (its own level in full), never a finer level.
    """
    groups = [torch.full((prefix_len,), -1, dtype=torch.long, device=device)]
    groups += [torch.full((int(n),), l, dtype=torch.long, device=device) for l, n in enumerate(level_sizes)]
    group_n = torch.cat(groups)
    return group_n[None, :] <= group_n[:, None]


class DenseBlockCausal(LevelAttention):
    """The same visibility as `LevelAttention`, as one SDPA call through a dense mask (training only)."""

    def __call__(self, q, k, v, dropout_p: float = 0.0, backend: str = "sdpa") -> torch.Tensor:
        causal = block_causal_mask([n for n, _ in self.groups], device=q.device)  # (n, n); the prefix is group 0
        b, n = q.shape[0], causal.shape[0]
        valid = torch.ones(b, n, dtype=torch.bool, device=q.device) if self.key_valid is None else self.key_valid
        eye = torch.eye(n, dtype=torch.bool, device=q.device)
        mask = (causal[None] & valid[:, None, :]) | eye  # (b, n, n); a padded query sees itself
        return attention(q, k, v, rearrange(mask, "b n m -> b 1 n m"), dropout_p, backend)
