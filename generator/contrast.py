"""Caption-contrastive training: a clip must be likelier under its own caption than under the caption with
one word swapped for another of its kind ("a red circle ..." against "a red square ...").

Teacher-forced likelihood alone lets the generator lean on whichever words are easy (colour moves the
coarse levels) and nearly ignore a word that only fine tokens show (shape: `bench/word_reliance.py`).
The contrastive term scores each clip's likelihood ratio between its caption and a swapped one, a
caption classifier made of the generator itself (in the spirit of condition-contrastive alignment for
autoregressive image models, Chen et al. 2024), so the swapped word's tokens must be told apart to lower it.
The swapped captions are encoded once, with the token cache (`generator.build_cache --contrast-words`).
A swapped caption is itself trained on (pushed away from the clip), so it must stay a caption of the
training data: on Shapes a swap that names a held-out colour x shape pair is ruled out (`allowed`).
Letters: b - batch.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def parse_word_groups(specs: Sequence[str]) -> list[list[str]]:
    """["circle,square,triangle", ...] -> [["circle", "square", "triangle"], ...]; each group needs two
    distinct words and a word may sit in one group only."""
    groups, seen = [], {}
    for spec in specs:
        words = [w.strip().lower() for w in spec.split(",") if w.strip()]
        if len(set(words)) < 2:
            raise ValueError(f"a word group needs at least two distinct words, got {spec!r}")
        for w in words:
            if not re.fullmatch(r"[a-z][a-z' -]*", w):
                raise ValueError(f"word {w!r} in group {spec!r}: use letters, spaces, hyphens or apostrophes")
            if w in seen and seen[w] != len(groups):
                raise ValueError(f"word {w!r} is in two groups: {specs[seen[w]]!r} and {spec!r}")
            seen[w] = len(groups)
        groups.append(list(dict.fromkeys(words)))
    return groups


def swap_word(caption: str, groups: Sequence[Sequence[str]], generator: torch.Generator | None = None,
              allowed: Callable[[str], bool] | None = None) -> str:
    """`caption` with one whole-word occurrence of a group's word replaced by another word of that group
    (a case-insensitive match; the replacement is written in lower case), drawn with `generator`: an
    occurrence, then a word for it. Without a generator: the first occurrence, replaced by the next word of
    its group (a fixed probe, `bench/word_reliance.py`). `allowed(new_caption)` may rule swaps out (e.g.
    a pair of words training must never see); the draw is among the swaps it allows. ValueError when
    no swap is left."""
    spots = []  # (start, end, [replacements in the group's cyclic order after the word]) of each match
    for words in groups:
        words = list(words)
        for i, w in enumerate(words):
            for m in re.finditer(rf"\b{re.escape(w)}\b", caption, re.IGNORECASE):
                news = [words[(i + k) % len(words)] for k in range(1, len(words))]
                news = [n for n in news if allowed is None or allowed(caption[:m.start()] + n + caption[m.end():])]
                if news:
                    spots.append((m.start(), m.end(), news))
    if not spots:
        raise ValueError(f"caption {caption!r}: no word of the contrast groups {[list(g) for g in groups]} "
                         "can be swapped" + (" to a caption `allowed` accepts" if allowed is not None else ""))
    spots.sort()
    if generator is None:
        start, end, news = spots[0]
        new = news[0]
    else:
        start, end, news = spots[int(torch.randint(len(spots), (1,), generator=generator))]
        new = news[int(torch.randint(len(news), (1,), generator=generator))]
    return caption[:start] + new + caption[end:]


def contrast_loss(nats_true: torch.Tensor, nats_swapped: torch.Tensor, keep: torch.Tensor, tau: float):
    """softplus(-gap / tau) averaged over the kept clips, gap = nats_swapped - nats_true (b,) in nats per bit:
    the logistic loss of telling the true caption from the swapped one by the likelihood ratio, with a
    temperature `tau` in nats per bit. Clips trained on the null text (keep False) do not count.
    Returns (loss, stats: contrast, contrast_gap)."""
    if nats_true.shape != nats_swapped.shape or nats_true.shape != keep.shape:
        raise ValueError(f"per-clip nats {tuple(nats_true.shape)} / {tuple(nats_swapped.shape)} and keep "
                         f"{tuple(keep.shape)} must all be (b,)")
    gap = nats_swapped - nats_true  # (b,)
    weight = keep.float()
    count = weight.sum().clamp(min=1.0)
    loss = (F.softplus(-gap / tau) * weight).sum() / count
    return loss, {"contrast": loss.detach(), "contrast_gap": (gap.detach() * weight).sum() / count}


class SwappedCaptions(torch.utils.data.Dataset):
    """A captioned dataset whose samples (dicts with "caption", "prompt" or "text") gain a "negative_prompt":
    the caption with one word swapped (`swap_word`, with `allowed`), drawn from `seed` and the sample's index
    alone, so a cache built in parts, in any order, gets the same captions."""

    def __init__(self, dataset, groups: Sequence[Sequence[str]], seed: int = 0,
                 allowed: Callable[[str], bool] | None = None):
        self.dataset, self.groups, self.seed, self.allowed = dataset, [list(g) for g in groups], int(seed), allowed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        sample = self.dataset[i]
        key = next((k for k in ("caption", "prompt", "text") if isinstance(sample, dict) and k in sample), None)
        if key is None:
            raise ValueError(f"sample {i} has no caption to swap a word in (keys: "
                             f"{sorted(sample) if isinstance(sample, dict) else type(sample).__name__})")
        rng = torch.Generator().manual_seed((self.seed << 32) + i)
        return {**sample, "negative_prompt": swap_word(sample[key], self.groups, rng, self.allowed)}
