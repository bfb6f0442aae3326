"""The next-scale transformer as a package: config, attention, positions, block, cache, loss, model.

PyraTok's global AR prior (§3) and the VAR/Infinity-style generator backbone share it.
"""
from .attention import LevelAttention, attention
from .cache import KVCache
from .config import ATTN_BACKENDS, TEXT_MODES, NextScaleConfig
from .loss import bitwise_loss
from .position import FourierPosition, grid_coords
from .transformer import NextScaleTransformer

__all__ = [
    "ATTN_BACKENDS", "TEXT_MODES", "FourierPosition", "KVCache", "LevelAttention", "NextScaleConfig",
    "NextScaleTransformer", "attention", "bitwise_loss", "grid_coords",
]
