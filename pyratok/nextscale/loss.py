"""Bitwise BCE: the one loss of next-scale bit prediction (Infinity's bitwise heads).

Used by PyraTok's global AR objective (tokenizer prior) and by the generator's training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

WEIGHTINGS = ("token", "level")


def bitwise_loss(logits: list[torch.Tensor], bits: list[torch.Tensor], weighting: str = "token",
                 token_weights: list[torch.Tensor | None] | None = None):
    """BCE of per-bit logits (b, t, h, w, k) against bits in {-1, +1} (differentiable bits, e.g. LaPQ's
    straight-through ones, pass their gradient on: the rate term of the tokenizer's AR objective).

    weighting "token": averaged over every bit of every token of every level (VAR: each token
    counts once); "level": each level's mean BCE, averaged over levels (the tokenizer's AR prior).
    token_weights: per level None, (b, t, h, w) weights >= 0 (a token then counts as its weight) or
    (b, t, h, w, k) (each bit does); in the loss only: the stats stay unweighted means, comparable across runs.
    Returns (loss, stats); stats are detached: loss/level{l}, bit_acc/level{l}, bit_acc.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if len(logits) != len(bits):
        raise ValueError(f"got logits for {len(logits)} levels but bits for {len(bits)}")
    token_weights = check_token_weights(token_weights, bits)
    sums, counts, stats, correct = [], [], {}, 0.0
    for level, (lg, b, w) in enumerate(zip(logits, bits, token_weights)):
        if lg.shape != b.shape:
            raise ValueError(f"level {level}: logits {tuple(lg.shape)} do not match bits {tuple(b.shape)}")
        target = (b.float() + 1) / 2  # {-1, +1} -> {0, 1}; straight-through bits keep their gradient
        per_bit = F.binary_cross_entropy_with_logits(lg.float(), target, reduction="none")  # (b, t, h, w, k)
        hits = ((lg.detach() > 0).float() == target).float().sum()
        loss_sum, count = weighted_sum(per_bit, w)
        sums.append(loss_sum)
        counts.append(count)
        correct = correct + hits
        stats[f"loss/level{level}"] = per_bit.detach().sum() / b.numel()
        stats[f"bit_acc/level{level}"] = hits / b.numel()
    stats["bit_acc"] = correct / sum(b.numel() for b in bits)
    if weighting == "token":
        return sum(sums) / sum(counts), stats
    return sum(s / c for s, c in zip(sums, counts)) / len(sums), stats


def check_token_weights(token_weights, bits: list[torch.Tensor]) -> list:
    """token_weights as one entry per level (None: every token weighs 1), each matching its level's grid
    (b, t, h, w) or its bits (b, t, h, w, k)."""
    if token_weights is None:
        return [None] * len(bits)
    if len(token_weights) != len(bits):
        raise ValueError(f"got token weights for {len(token_weights)} levels but bits for {len(bits)}")
    for level, (w, b) in enumerate(zip(token_weights, bits)):
        if w is not None and w.shape not in (b.shape[:-1], b.shape):
            raise ValueError(f"level {level}: token weights {tuple(w.shape)} match neither the grid "
                             f"{tuple(b.shape[:-1])} nor the bits {tuple(b.shape)}")
    return list(token_weights)


def weighted_sum(per_unit: torch.Tensor, weights: torch.Tensor | None):
    """(sum of per_unit's entries, each times its token's (b, t, h, w) weight or its own (b, t, h, w, n) one;
    how many entries that counts as): per_unit (b, t, h, w, n), n bits or codes of a token."""
    if weights is None:
        return per_unit.sum(), per_unit.numel()
    if weights.dim() == per_unit.dim():
        if weights.shape != per_unit.shape:
            raise ValueError(f"weights {tuple(weights.shape)} do not match the entries {tuple(per_unit.shape)}")
        w = weights.to(per_unit.dtype)
        return (per_unit * w).sum(), w.sum().clamp_min(1e-12)
    w = weights.to(per_unit.dtype)[..., None]
    return (per_unit * w).sum(), (w.sum() * per_unit.shape[-1]).clamp_min(1e-12)  # all weights 0: a loss of 0
