"""The learned null text: captionless rows, text dropout and the classifier-free guidance text batch.

Shared by PyraTok's tokenizer (text dropout, §3) and its generator (CFG against a null prompt).
Letters: b - batch, s - text length, d - text width; `null` is the learned (n_null, d) parameter.
"""
from __future__ import annotations

import torch


def pad_text(states: torch.Tensor, mask: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, s0, d), (b, s0) -> (b, s, d), (b, s) with masked-out zero padding (s <= s0: unchanged)."""
    pad = s - states.shape[1]
    if pad <= 0:
        return states, mask
    b, _, d = states.shape
    return torch.cat([states, states.new_zeros(b, pad, d)], dim=1), torch.cat([mask, mask.new_zeros(b, pad)], dim=1)


def full_mask(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The given mask as bool on the states' device, or all True (b, s) when None."""
    if mask is None:
        return torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
    return mask.to(states.device).bool()


def mean_text(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(b, s, d) and its (b, s) mask (None: all valid) -> (b, d), the mean of each row's valid states."""
    weights = full_mask(states, mask).to(states.dtype)[..., None]  # (b, s, 1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def null_text_like(null: torch.Tensor, batch: int, seq_len: int = 1, device=None):
    """The null text (n_null, d) padded to max(seq_len, n_null): states (b, s, d), mask (b, s) bool."""
    n_null, d = null.shape
    s = max(seq_len, n_null)
    device = device if device is not None else null.device
    states = torch.cat([null, null.new_zeros(s - n_null, d)]).to(device)
    mask = (torch.arange(s, device=device) < n_null)[None].expand(batch, s)
    return states[None].expand(batch, s, d), mask


def drop_text(null: torch.Tensor, text_states, text_mask, drop: torch.Tensor):
    """Replace the text of rows where drop (b,) is True by the null text; text_states None: all null.

    The null text always enters the graph (gradient zero where unused), so DDP / ZeRO see every
    parameter used at every step.
    """
    b = drop.shape[0]
    if text_states is None:
        return null_text_like(null, b, 1, drop.device)
    s = max(text_states.shape[1], null.shape[0])
    text_states, text_mask = pad_text(text_states, full_mask(text_states, text_mask), s)
    null_states, null_mask = null_text_like(null, b, s, text_states.device)
    drop = drop.to(text_states.device)
    states = torch.where(drop[:, None, None], null_states.to(text_states.dtype), text_states)
    return states, torch.where(drop[:, None], null_mask, text_mask)


def cfg_text_batch(null: torch.Tensor, prompt_embeds, prompt_mask, negative_embeds, negative_mask, batch: int,
                   use_cfg: bool, device):
    """Conditional text (b, s, d) + mask; with CFG [cond; uncond] (2b, s, d), uncond = the negative
    prompt (batch 1 or b) or the null text. prompt_embeds None: the null text (unconditional)."""
    if prompt_embeds is None:
        states, mask = null_text_like(null, batch, 1, device)
    else:
        states = prompt_embeds.to(device)
        mask = full_mask(states, prompt_mask)
    if not use_cfg:
        return states, mask
    if negative_embeds is None:
        neg, neg_mask = null_text_like(null, batch, 1, device)
    else:
        neg = negative_embeds.to(device)
        neg_mask = full_mask(neg, negative_mask)
        if neg.shape[0] == 1 and batch > 1:
            neg, neg_mask = neg.expand(batch, *neg.shape[1:]), neg_mask.expand(batch, -1)
        if neg.shape[0] != batch:
            raise ValueError(f"negative_prompt_embeds has batch {neg.shape[0]}, expected 1 or {batch}")
    s = max(states.shape[1], neg.shape[1])
    states, mask = pad_text(states, mask, s)
    neg, neg_mask = pad_text(neg.to(states.dtype), neg_mask, s)
    return torch.cat([states, neg]), torch.cat([mask, neg_mask])
