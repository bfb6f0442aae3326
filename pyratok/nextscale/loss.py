"""Bitwise BCE: the one loss of next-scale bit prediction (Infinity's bitwise heads).

Used by PyraTok's global AR objective (tokenizer prior) and by the generator's training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

WEIGHTINGS = ("token", "level")


def bitwise_loss(logits: list[torch.Tensor], bits: list[torch.Tensor], weighting: str = "token"):
    """BCE of per-bit logits (b, t, h, w, k) against bits in {-1, +1} (differentiable bits, e.g. LaPQ's
    straight-through ones, pass their gradient on: the rate term of the tokenizer's AR objective).

    weighting "token": averaged over every bit of every token of every level (VAR: each token
    counts once); "level": each level's mean BCE, averaged over levels (the tokenizer's AR prior).
    Returns (loss, stats); stats are detached: loss/level{l}, bit_acc/level{l}, bit_acc.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if len(logits) != len(bits):
        raise ValueError(f"got logits for {len(logits)} levels but bits for {len(bits)}")
    sums, counts, stats, correct = [], [], {}, 0.0
    for level, (lg, b) in enumerate(zip(logits, bits)):
        if lg.shape != b.shape:
            raise ValueError(f"level {level}: logits {tuple(lg.shape)} do not match bits {tuple(b.shape)}")
        target = (b.float() + 1) / 2  # {-1, +1} -> {0, 1}; straight-through bits keep their gradient
        loss_sum = F.binary_cross_entropy_with_logits(lg.float(), target, reduction="sum")
        hits = ((lg.detach() > 0).float() == target).float().sum()
        sums.append(loss_sum)
        counts.append(b.numel())
        correct = correct + hits
        stats[f"loss/level{level}"] = loss_sum.detach() / b.numel()
        stats[f"bit_acc/level{level}"] = hits / b.numel()
    stats["bit_acc"] = correct / sum(counts)
    if weighting == "token":
        return sum(sums) / sum(counts), stats
    return sum(s / c for s, c in zip(sums, counts)) / len(sums), stats
