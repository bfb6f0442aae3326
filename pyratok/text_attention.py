"""Gated cross-attention from quantizer tokens to text states.

Implements the text-guided quantization of PyraTok §3.2 (text priors at every LaPQ level);
the gate is learned and starts open, so captions shape the tokens from step one.
Letters: b - batch, n - tokens, s - text length, d - width, h - heads.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


class TextCrossAttention(nn.Module):
    def __init__(self, dim: int, text_dim: int, heads: int = 4, gate_init: float = 0.5):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(text_dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, n, d); text: (b, s, d_text); text_mask: (b, s) bool, True = attend."""
        q = rearrange(self.to_q(self.norm(x)), "b n (h e) -> b h n e", h=self.heads)
        k, v = rearrange(self.to_kv(text.to(x.dtype)), "b s (two h e) -> two b h s e", two=2, h=self.heads)
        mask = None if text_mask is None else rearrange(text_mask.bool(), "b s -> b 1 1 s")
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return x + self.gate * self.to_out(rearrange(out, "b h n e -> b n (h e)"))
