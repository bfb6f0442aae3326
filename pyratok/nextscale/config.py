"""`NextScaleConfig`: the shape and options of the next-scale transformer.

PyraTok's global AR prior (§3) and the VAR/Infinity-style generator share this config.
"""
from __future__ import annotations

from dataclasses import dataclass

TEXT_MODES = ("cross", "prefix")
ATTN_BACKENDS = ("sdpa", "xformers")


@dataclass
class NextScaleConfig:
    latent_channels: int = 8
    num_bits: int = 16
    width: int = 128
    depth: int = 4
    heads: int = 4
    text_dim: int = 384
    num_levels: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    text_mode: str = "cross"  # "cross": cross-attention in each block; "prefix": text tokens prepended
    max_text_len: int = 77
    gradient_checkpointing: bool = False
    attn_backend: str = "sdpa"  # "xformers" is used only on CUDA when installed, else SDPA
    sequence_parallel_size: int = 1  # > 1: DeepSpeed Ulysses over that many ranks (see nextscale.sequence_parallel)
    input_conv: int = 0  # odd k > 0: each token also sees its k^3 neighbourhood of the input grid (nextscale.local_input)

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width={self.width} must be divisible by heads={self.heads}")
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {self.text_mode!r}")
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend must be one of {ATTN_BACKENDS}, got {self.attn_backend!r}")
        for name in ("latent_channels", "num_bits", "num_levels", "max_text_len", "sequence_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.heads % self.sequence_parallel_size:
            raise ValueError(f"heads={self.heads} must be divisible by sequence_parallel_size="
                             f"{self.sequence_parallel_size} (Ulysses splits heads across ranks)")
        if self.input_conv < 0 or (self.input_conv and self.input_conv % 2 == 0):
            raise ValueError(f"input_conv must be 0 (off) or an odd kernel size, got {self.input_conv}")
        if self.depth < 0:  # depth 0 is allowed: callers use it to mean "no prior"
            raise ValueError(f"depth must be >= 0, got {self.depth}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
