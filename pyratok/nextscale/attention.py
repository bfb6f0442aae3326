"""Attention of the next-scale transformer: block-causal self-attention as one SDPA call per level.

PyraTok's next-scale prior / generator (VAR-style): level l sees the text and levels <= l. No N x N
mask is ever built: each level's queries attend the prefix of keys it may see (flash / memory-
efficient kernels, memory linear in tokens). Letters: b - batch, n - queries, m - keys, h - heads,
e - head dim, s - text length, d - width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

try:  # optional fast attention, used only on CUDA tensors and only when asked for
    import xformers.ops as _xops
except Exception:  # noqa: BLE001 - any import failure just means "not available"
    _xops = None


def attention(q, k, v, mask=None, dropout_p: float = 0.0, backend: str = "sdpa") -> torch.Tensor:
    """q: (b, h, n, e), k/v: (b, h, m, e), mask: bool broadcastable to (b, h, n, m) -> (b, h, n, e)."""
    if backend == "xformers" and _xops is not None and q.is_cuda:
        b, h, n, _ = q.shape
        m = k.shape[2]
        bias = None
        if mask is not None:  # additive bias; last dim padded to a multiple of 8 as xformers requires
            bias = q.new_zeros(b, h, n, (m + 7) // 8 * 8)[..., :m]
            bias.masked_fill_(~mask.expand(b, h, n, m), float("-inf"))
        out = _xops.memory_efficient_attention(
            *(rearrange(x, "b h n e -> b n h e") for x in (q, k, v)), attn_bias=bias, p=dropout_p
        )
        return rearrange(out, "b n h e -> b h n e")
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


@dataclass
class LevelAttention:
    """Which keys each query may see, as query groups: groups[i] = (n_i, m_i) means the next n_i
    queries attend the first m_i keys, except keys where key_valid (b, m) is False (text padding).

    Training: the text prefix (if any) then one group per level; cached sampling: one group.
    """

    groups: list[tuple[int, int]]
    key_valid: torch.Tensor | None = None  # (b, m) bool; None: every key may be attended
    distributed: object = None  # a sequence_parallel.UlyssesAttention: x holds this rank's slice of the sequence

    def __post_init__(self):
        if self.key_valid is not None and not self.key_valid.is_meta and bool(self.key_valid.all()):
            self.key_valid = None  # no mask at all lets SDPA take its fastest kernel

    @classmethod
    def block_causal(cls, level_sizes: Sequence[int], prefix: int = 0, key_valid=None) -> "LevelAttention":
        """Prefix tokens see the prefix; level l sees the prefix and levels <= l."""
        groups = [(prefix, prefix)] if prefix else []
        seen = prefix
        for n in level_sizes:
            seen += int(n)
            groups.append((int(n), seen))
        return cls(groups, key_valid)

    def key_mask(self, m: int):
        """(b, 1, 1, m) bool for the first m keys, or None when all are valid."""
        return None if self.key_valid is None else rearrange(self.key_valid[:, :m], "b m -> b 1 1 m")

    def __call__(self, q, k, v, dropout_p: float = 0.0, backend: str = "sdpa") -> torch.Tensor:
        """q: (b, h, n, e) with n = sum of n_i; k/v: (b, h, m, e) -> (b, h, n, e)."""
        if len(self.groups) == 1:
            n, m = self.groups[0]
            return attention(q, k[:, :, :m], v[:, :, :m], self.key_mask(m), dropout_p, backend)
        outs, start = [], 0
        for n, m in self.groups:  # level l: (b, h, n_l, e) queries against (b, h, m_l, e) keys
            outs.append(attention(q[:, :, start:start + n], k[:, :, :m], v[:, :, :m], self.key_mask(m),
                                  dropout_p, backend))
            start += n
        return torch.cat(outs, dim=2)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float, backend: str):
        super().__init__()
        self.heads, self.dropout, self.backend = heads, dropout, backend
        self.to_qkv = nn.Linear(width, 3 * width)
        self.to_out = nn.Linear(width, width)

    def forward(self, x, layout: LevelAttention, past=None):
        """x: (b, n, d); past: cached (k, v) each (b, h, m0, e). Returns out (b, n, d) and the full (k, v)."""
        p = self.dropout if self.training else 0.0
        if layout.distributed is not None:  # Ulysses: x is this rank's (b, n / P, d) slice
            q, k, v = rearrange(self.to_qkv(x), "b n (three h e) -> three b n h e", three=3, h=self.heads)
            out = layout.distributed(q, k, v, layout, p, self.backend)  # (b, n / P, h, e)
            return self.to_out(rearrange(out, "b n h e -> b n (h e)")), None
        q, k, v = rearrange(self.to_qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.heads)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (b, h, m0 + n, e)
        out = layout(q, k, v, p, self.backend)
        return self.to_out(rearrange(out, "b h n e -> b n (h e)")), (k, v)


class CrossAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float, backend: str):
        super().__init__()
        self.heads, self.dropout, self.backend = heads, dropout, backend
        self.to_q = nn.Linear(width, width)
        self.to_kv = nn.Linear(width, 2 * width)
        self.to_out = nn.Linear(width, width)

    def text_kv(self, text):
        """text: (b, s, d) projected text -> (k, v) each (b, h, s, e); cacheable across levels."""
        k, v = rearrange(self.to_kv(text), "b s (two h e) -> two b h s e", two=2, h=self.heads)
        return k, v

    def forward(self, x, text_kv, text_mask):
        q = rearrange(self.to_q(x), "b n (h e) -> b h n e", h=self.heads)
        p = self.dropout if self.training else 0.0
        out = attention(q, *text_kv, text_mask, p, self.backend)
        return self.to_out(rearrange(out, "b h n e -> b n (h e)"))
