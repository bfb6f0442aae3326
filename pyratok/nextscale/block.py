"""`NextScaleBlock`: pre-norm block of the next-scale transformer.

PyraTok's prior / generator: block-causal self-attention, optional text cross-attention, MLP.
"""
from __future__ import annotations

import torch.nn as nn

from .attention import CrossAttention, LevelAttention, SelfAttention
from .config import NextScaleConfig


class NextScaleBlock(nn.Module):
    """Pre-norm block: self-attention (block-causal), optional text cross-attention, MLP."""

    def __init__(self, cfg: NextScaleConfig):
        super().__init__()
        d = cfg.width
        self.norm1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, cfg.heads, cfg.dropout, cfg.attn_backend)
        self.cross = CrossAttention(d, cfg.heads, cfg.dropout, cfg.attn_backend) if cfg.text_mode == "cross" else None
        self.norm_cross = nn.LayerNorm(d) if self.cross is not None else None
        self.norm2 = nn.LayerNorm(d)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Dropout(cfg.dropout), nn.Linear(hidden, d)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def start_as_identity(self) -> None:
        """Zero the three output projections: the block adds nothing to its input until trained (a model
        grown deeper from a saved one computes what that one did; `pyratok.checkpoints.load_saved_weights`)."""
        for out in (self.attn.to_out, self.cross.to_out if self.cross is not None else None, self.mlp[-1]):
            if out is not None:
                nn.init.zeros_(out.weight)
                nn.init.zeros_(out.bias)

    def forward(self, x, layout: LevelAttention, past=None, text_kv=None, text_mask=None, text=None):
        """x: (b, n, d). Returns (x, (k, v)) with the keys/values this block attended to. Cross-attention
        reads the text as `text_kv` (this block's projected (k, v), cached while sampling) or projects
        `text` (b, s, d) here, inside the block's forward, where FSDP has gathered the block's weights."""
        out, kv = self.attn(self.norm1(x), layout, past)
        x = x + self.drop(out)
        if self.cross is not None and text_kv is None and text is not None:
            text_kv = self.cross.text_kv(text)
        if self.cross is not None and text_kv is not None:
            x = x + self.drop(self.cross(self.norm_cross(x), text_kv, text_mask))
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, kv
