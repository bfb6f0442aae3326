"""Tiny random models shared by the tests (a few thousand parameters, 32x32 videos in milliseconds)."""
from __future__ import annotations

import torch

from pyratok.tokenizer import PyraTokTokenizer


def tiny_tokenizer_kwargs(text_dim: int = 24) -> dict:
    """PyraTokTokenizer init kwargs: base_dim-8 Wan, 3 levels of 16 bits in groups of 4."""
    return dict(
        backbone_config={"base_dim": 8, "z_dim": 4, "num_res_blocks": 1},
        quantizer_config={"hidden_dim": 32, "num_bits": 16, "bits_per_group": 4,
                          "level_strides": [[4, 4, 4], [2, 2, 2], [1, 1, 1]]},
        alignment_config={"embed_dim": 16, "hidden_dim": 16},
        prior_config={"width": 32, "depth": 1, "heads": 2},
        text_dim=text_dim,
    )


def tiny_tokenizer(seed: int = 0, text_dim: int = 24, **overrides) -> PyraTokTokenizer:
    """A seeded tiny tokenizer in eval mode; dict overrides update a config, others replace a kwarg."""
    torch.manual_seed(seed)
    kwargs = tiny_tokenizer_kwargs(text_dim)
    for key, value in overrides.items():
        kwargs[key].update(value) if isinstance(value, dict) else kwargs.__setitem__(key, value)
    return PyraTokTokenizer(**kwargs).eval()
