"""`KVCache`: keys/values of the levels already decoded, for one-pass-per-level sampling.

PyraTok generation (VAR-style next-scale prediction): level l attends to the cache of levels < l.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVCache:
    """Keys/values of everything already processed, per block: keys[i], values[i] (b, h, m, e)."""

    keys: list = field(default_factory=list)
    values: list = field(default_factory=list)
    key_mask: torch.Tensor | None = None  # (b, m) bool: cached keys that may be attended (text padding off)
    text_kv: list | None = None  # cross mode: per block (k, v) of the text, (b, h, s, e)
    text_mask: torch.Tensor | None = None  # cross mode: (b, 1, 1, s) bool
    batch: int | None = None
    levels_done: int = 0
    features: torch.Tensor | None = None  # the last level's hidden states, for a head that reads them (generator)
