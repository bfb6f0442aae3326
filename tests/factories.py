"""Tiny random models shared by the tests (a few thousand parameters, 32x32 videos in milliseconds)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

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


LATENT = (2, 4, 4)  # latent grid of the token caches in tests


class FakeTextEncoder:
    """Deterministic stand-in for TextEncoder: hidden states from the prompt length, 3-6 tokens."""

    def __call__(self, prompts):
        n = max(3 + len(p) % 4 for p in prompts)
        states = torch.stack([torch.randn(n, 384, generator=torch.Generator().manual_seed(len(p))) for p in prompts])
        mask = torch.stack([torch.arange(n) < 3 + len(p) % 4 for p in prompts])
        return type("Out", (), {"hidden_states": states, "attention_mask": mask})()


def tiny_token_cache(out: Path, negatives: bool = False, latents: bool = False) -> Path:
    """6 pyramids (3 prompts) of a random LaPQ over LATENT: a token cache for generator training tests;
    `negatives`: with a swapped caption per clip (generator.contrast); `latents`: with the latents stored."""
    from generator.token_cache import QuantizerEncoder, build_token_cache, random_latents
    from pyratok.lapq import LaPQ, LaPQConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        quantizer = LaPQ(LaPQConfig(use_text=True)).eval()
    samples = random_latents(6, 8, LATENT, torch.Generator().manual_seed(0), prompts=["a", "red ball", "two cats"])
    if negatives:
        samples = [{**s, "negative_prompt": f"not {s['prompt']}"} for s in samples]
    return build_token_cache(QuantizerEncoder(quantizer), FakeTextEncoder(), samples, out,
                             batch_size=4, shard_size=4, progress=False, latents=latents)


@contextmanager
def fresh_accelerate_state():
    """Run a trainer in this process: accelerate's process-wide state is reset before and after."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        yield
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
