"""Group-code heads: a token's bits predicted as groups of codes instead of one logit per bit.

The bitwise head (Infinity) draws every bit of a token on its own, so a token whose bits the model
is unsure of comes out as a per-bit blend of the codes it hesitates between. Here each group of
`group_bits` bits is one of 2^group_bits codes with a softmax over them, and with `sequential` the
groups of a token are drawn one after another, group j seeing the codes of groups < j (the depth
prediction of RQ-Transformer, as an MLP: LaPQ's `refine_groups` quantizes a token's groups in the
same order, each from the residual the earlier ones left).
Letters: b - batch, t/h/w - a level's grid, d - width, g - groups per token, v - codes per group.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from pyratok.nextscale import bitwise_loss
from pyratok.nextscale.loss import check_token_weights, weighted_sum

HEADS = ("bits", "group_codes", "group_codes_sequential")


def bits_to_codes(bits: torch.Tensor, group_bits: int) -> torch.Tensor:
    """(..., k) bits in {-1, +1} -> (..., k // group_bits) long codes; bit i of a group is the code's 2^i."""
    on = (bits > 0).long().unflatten(-1, (-1, group_bits))  # (..., g, group_bits)
    return (on << torch.arange(group_bits, device=bits.device)).sum(-1)


def codes_to_bits(codes: torch.Tensor, group_bits: int) -> torch.Tensor:
    """(..., g) codes -> (..., g * group_bits) float bits in {-1, +1}; inverse of `bits_to_codes`."""
    on = (codes[..., None] >> torch.arange(group_bits, device=codes.device)) & 1  # (..., g, group_bits)
    return (on.float() * 2 - 1).flatten(-2)


class GroupCodeHead(nn.Module):
    """Features (..., d) -> logits (..., g, v) of each bit group's code; see the module docstring.

    Group j's input is the feature plus a group embedding plus, when `sequential`, the summed
    embeddings of the codes of groups < j (teacher-forced in training, sampled in generation).
    """

    def __init__(self, width: int, num_bits: int, group_bits: int, hidden: int, sequential: bool):
        super().__init__()
        if num_bits % group_bits:
            raise ValueError(f"num_bits={num_bits} must be a multiple of head_group_bits={group_bits}")
        self.group_bits, self.groups, self.codes = group_bits, num_bits // group_bits, 2**group_bits
        self.sequential = sequential
        self.group_embed = nn.Parameter(torch.zeros(self.groups, width))
        self.code_embed = nn.Embedding(self.groups * self.codes, width) if sequential else None
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(),
                                 nn.Linear(hidden, self.codes))

    def _embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., j) codes of groups 0..j-1 -> (..., j, d), each group from its own table."""
        offsets = torch.arange(codes.shape[-1], device=codes.device) * self.codes
        return self.code_embed(codes + offsets)

    def forward(self, features: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (..., g, v) of every group; codes (..., g) are the true ones."""
        x = features[..., None, :] + self.group_embed  # (..., g, d)
        if self.sequential:
            emb = self._embed(codes)  # (..., g, d)
            before = torch.cat([torch.zeros_like(emb[..., :1, :]), emb[..., :-1, :].cumsum(-2)], dim=-2)
            x = x + before  # group j sees the codes of groups < j only
        return self.mlp(x)

    def group_logits(self, features: torch.Tensor, previous: torch.Tensor, group: int) -> torch.Tensor:
        """Logits (..., v) of group `group` given features (..., d) and the codes (..., group) before it."""
        x = features + self.group_embed[group]
        if self.sequential and group:
            x = x + self._embed(previous).sum(-2)
        return self.mlp(x)

    @torch.no_grad()
    def sample(self, features: torch.Tensor, uniforms: torch.Tensor, guide, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
        """Bits (b, ..., g * group_bits) drawn group by group; one uniform per group (b, ..., g).

        features: (b, ..., d), or (2b, ...) with `guide` mapping (2b, ..., v) logits to guided (b, ..., v);
        top_k / top_p act on each group's codes (transformers' warpers), top_k=1 is greedy.
        """
        rows = uniforms.shape[0]
        codes = uniforms.new_zeros(uniforms.shape, dtype=torch.long)
        warpers = ([TopKLogitsWarper(top_k)] if top_k is not None else []) + \
            ([TopPLogitsWarper(top_p)] if top_p is not None and top_p < 1.0 else [])
        for j in range(self.groups):
            previous = codes[..., :j]
            if features.shape[0] != rows:  # the guidance batch: the same codes under both texts
                previous = torch.cat([previous, previous])
            logits = guide(self.group_logits(features, previous, j)).float() / temperature  # (b, ..., v)
            flat = logits.flatten(0, -2)
            for warper in warpers:
                flat = warper(None, flat)
            cdf = flat.softmax(-1).cumsum(-1)  # inverse-CDF draw: code = first index whose cdf passes u
            picked = torch.searchsorted(cdf, uniforms[..., j].reshape(-1, 1).contiguous(), right=True)
            codes[..., j] = picked.clamp(max=self.codes - 1).view(uniforms.shape[:-1])
        return codes_to_bits(codes, self.group_bits)


def group_code_loss(logits: list[torch.Tensor], bits: list[torch.Tensor], token_weights=None):
    """Cross-entropy of code logits (b, t, h, w, g, v) against the codes of bits (b, t, h, w, k).

    Reported per bit (a code's nats over its group_bits bits), so it reads like `bitwise_loss`: every
    token counts once (or as its weight: token_weights, as in `bitwise_loss`). Returns (loss, stats):
    loss/level{l}, bit_acc/level{l} (the likeliest code's bits), bit_acc, code_acc.
    """
    if len(logits) != len(bits):
        raise ValueError(f"got logits for {len(logits)} levels but bits for {len(bits)}")
    token_weights = check_token_weights(token_weights, bits)
    sums, counts, stats, bit_hits, code_hits, n_codes = [], [], {}, 0.0, 0.0, 0
    for level, (lg, b, w) in enumerate(zip(logits, bits, token_weights)):
        groups, v = lg.shape[-2:]
        group_bits = v.bit_length() - 1
        if lg.shape[:-2] != b.shape[:-1] or groups * group_bits != b.shape[-1]:
            raise ValueError(f"level {level}: code logits {tuple(lg.shape)} do not match bits {tuple(b.shape)}")
        codes = bits_to_codes(b, group_bits)  # (b, t, h, w, g)
        per_code = F.cross_entropy(lg.flatten(0, -2).float(), codes.flatten(), reduction="none").view(codes.shape)
        best = lg.detach().argmax(-1)
        hits = (codes_to_bits(best, group_bits) == (b > 0).float() * 2 - 1).float().sum()
        loss_sum, code_count = weighted_sum(per_code, w)
        sums.append(loss_sum)
        counts.append(code_count * group_bits)
        bit_hits, code_hits, n_codes = bit_hits + hits, code_hits + (best == codes).float().sum(), n_codes + codes.numel()
        stats[f"loss/level{level}"] = per_code.detach().sum() / b.numel()  # nats per bit
        stats[f"bit_acc/level{level}"] = hits / b.numel()
    stats["bit_acc"] = bit_hits / sum(b.numel() for b in bits)
    stats["code_acc"] = code_hits / n_codes
    return sum(sums) / sum(counts), stats


def head_loss(logits: list[torch.Tensor], bits: list[torch.Tensor], token_weights=None):
    """The loss of whichever head made `logits`: code logits (b, t, h, w, g, v) -> `group_code_loss`,
    bit logits (b, t, h, w, k) -> `bitwise_loss` (every token counts once in both, or as its token weight)."""
    if logits and logits[0].dim() == bits[0].dim() + 1:
        return group_code_loss(logits, bits, token_weights)
    return bitwise_loss(logits, bits, token_weights=token_weights)


def clip_nats(logits: list[torch.Tensor], bits: list[torch.Tensor]) -> torch.Tensor:
    """Each clip's mean nats per bit over every level (b,), for either head (as `head_loss` weighs them)."""
    total, count = 0.0, 0
    for lg, b in zip(logits, bits):
        if lg.dim() == b.dim():
            per = F.binary_cross_entropy_with_logits(lg.float(), (b.float() + 1) / 2, reduction="none")
        else:
            codes = bits_to_codes(b, lg.shape[-1].bit_length() - 1)  # (b, t, h, w, g)
            per = F.cross_entropy(lg.flatten(0, -2).float(), codes.flatten(), reduction="none").view(codes.shape)
        total = total + per.flatten(1).sum(1)
        count += b[0].numel()
    return total / count


def nats_per_bit(logits: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """One level's mean cross-entropy of each bit (k,): a bit logit's BCE, or, for code logits, each
    bit's even share of its group's code cross-entropy (so per-group means read alike for both heads)."""
    if logits.dim() == bits.dim():
        return F.binary_cross_entropy_with_logits(logits.float(), (bits.float() + 1) / 2,
                                                  reduction="none").flatten(0, -2).mean(0)
    group_bits = logits.shape[-1].bit_length() - 1
    codes = bits_to_codes(bits, group_bits).flatten()
    per_code = F.cross_entropy(logits.flatten(0, -2).float(), codes, reduction="none")
    per_group = per_code.view(-1, logits.shape[-2]).mean(0) / group_bits  # (g,)
    return per_group.repeat_interleave(group_bits)
