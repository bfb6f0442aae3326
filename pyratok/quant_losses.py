"""Losses and statistics of the binary codebook: commitment, grouped entropy, utilization.

Implements the LFQ-style entropy objective of PyraTok §3.2 over G groups of K/G bits,
with an exact softmax over the 2^(K/G) codes of each group (never an N x 2^K matrix).
Letters: n - tokens, g - groups, j - bits per group, c - codes of a group (2^j).
"""
from __future__ import annotations

import math

import torch
from einops import rearrange


def group_codes(bits_per_group: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """All 2^j codes of a group as (c, j) in {-1, +1}; code index = sum_j 2^j [bit_j > 0]."""
    idx = torch.arange(2**bits_per_group, device=device)
    on = (idx.unsqueeze(-1) >> torch.arange(bits_per_group, device=device)) & 1
    return (on * 2 - 1).to(dtype)


def commitment_loss(logits: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """Pull pre-binarization values towards their sign: mean (x - sign(x))^2."""
    return (logits.float() - hard.detach().float()).pow(2).mean()


def grouped_entropy(
    logits: torch.Tensor, bits_per_group: int, temperature: float = 0.1, usage_weight: float = 1.0
) -> torch.Tensor:
    """Per-token entropy (to minimise) minus usage entropy (to maximise), normalised to [~-1, 1].

    logits: (..., k) pre-binarization values; k must be a multiple of `bits_per_group`.
    """
    with torch.autocast(logits.device.type, enabled=False):  # float32 also under bf16 autocast
        return _grouped_entropy(logits.float(), bits_per_group, temperature, usage_weight)


def _grouped_entropy(logits: torch.Tensor, bits_per_group: int, temperature: float, usage_weight: float) -> torch.Tensor:
    x = rearrange(logits, "... (g j) -> (...) g j", j=bits_per_group)
    codes = group_codes(bits_per_group, x.device)  # (c, j)
    code_logits = torch.einsum("ngj,cj->ngc", x, codes) / temperature
    log_p = code_logits.log_softmax(-1)
    p = log_p.exp()
    per_token = -(p * log_p).sum(-1).mean()
    mean_p = p.mean(0)  # (g, c)
    usage = -(mean_p * mean_p.clamp_min(1e-12).log()).sum(-1).mean()
    return (per_token - usage_weight * usage) / math.log(2**bits_per_group)


@torch.no_grad()
def group_indices(hard: torch.Tensor, bits_per_group: int) -> torch.Tensor:
    """(..., k) in {-1, +1} -> (n, g) int64 code index of each group."""
    on = rearrange((hard > 0).long(), "... (g j) -> (...) g j", j=bits_per_group)
    weights = 2 ** torch.arange(bits_per_group, device=hard.device)
    return (on * weights).sum(-1)


@torch.no_grad()
def code_counts(hard: torch.Tensor, bits_per_group: int) -> torch.Tensor:
    """(g, 2^j) how often each code of each group occurs among the tokens of `hard`."""
    idx = group_indices(hard, bits_per_group)  # (n, g)
    n_codes = 2**bits_per_group
    offsets = torch.arange(idx.shape[1], device=idx.device) * n_codes
    flat = (idx + offsets).flatten()
    return torch.bincount(flat, minlength=idx.shape[1] * n_codes).view(idx.shape[1], n_codes)


def counts_to_stats(counts: torch.Tensor) -> dict:
    """utilization: share of codes used; perplexity: exp(usage entropy) / codes; both averaged over groups."""
    counts = counts.double()
    n_codes = counts.shape[-1]
    used = (counts > 0).double().mean(-1)
    p = counts / counts.sum(-1, keepdim=True).clamp_min(1)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
    return {
        "utilization": float(used.mean()),
        "perplexity": float((entropy.exp() / n_codes).mean()),
        "tokens_per_code": float(counts.sum(-1).mean() / n_codes),
    }


def usage_stats(hard: torch.Tensor, bits_per_group: int) -> dict:
    return counts_to_stats(code_counts(hard, bits_per_group))
