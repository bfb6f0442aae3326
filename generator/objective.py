"""The generator's training objective: teacher-forced next-scale bit prediction.

PyraTok generation stage, trained like VAR/Infinity: inputs z_hat_<l from the cached pyramid,
~10% null text (for CFG), optional bitwise self-correction (Infinity), the head's loss per level
(bitwise BCE, or the cross-entropy of group codes: generator.heads).
Letters: b - batch, t/h/w - a level's grid, k - bits, c - latent channels.
"""
from __future__ import annotations

import torch

from .contrast import contrast_loss
from .heads import clip_nats, head_loss
from .passes import teacher_forcing_steps


def flip_bits(bits: list[torch.Tensor], prob: float, generator: torch.Generator) -> list[torch.Tensor]:
    """Flip each bit of levels 0..L-2 with probability `prob` (the finest level feeds no input).

    Infinity's bitwise self-correction, simplified: targets stay the clean bits, so the model
    learns to predict the right level l from a slightly wrong z_hat_<l.
    """
    if prob <= 0:
        return list(bits)
    out = []
    for level, b in enumerate(bits):
        if level == len(bits) - 1:
            out.append(b)
            continue
        flip = torch.rand(b.shape, generator=generator, device=generator.device).to(b.device) < prob
        out.append(torch.where(flip, -b, b))
    return out


@torch.no_grad()
def teacher_forcing_inputs(quantizer, bits: list[torch.Tensor], latent_grid, flip_prob: float = 0.0, generator=None,
                           passes: int = 1):
    """The model's inputs: z_hat_<l (b, c, t_l, h_l, w_l) on grid l, from (possibly flipped) bits; with
    `passes` > 1 the finest level's later passes follow (generator.passes)."""
    if flip_prob > 0:
        if generator is None:
            raise ValueError("self-correction (flip_prob > 0) needs an explicit torch.Generator")
        bits = flip_bits(bits, flip_prob, generator)
    return teacher_forcing_steps(quantizer, quantizer.level_inputs(bits, tuple(latent_grid)), bits[-1], passes)


def generator_loss(model, quantizer, batch: dict, generator: torch.Generator, cfg_dropout: float = 0.1,
                   self_correction_prob: float = 0.0, passes: int = 1, contrast_weight: float = 0.0,
                   contrast_tau: float = 0.01):
    """Loss and detached stats for one batch of the token cache (see TokenCacheDataset.collate);
    `passes`: the model's finest_passes.

    batch: bits (list of (b, t_l, h_l, w_l, k) in {-1, +1}), text_states (b, s, d) or None,
    text_mask (b, s) or None, latent_grid (t, h, w); with contrast_weight > 0 also negative_text_states /
    negative_text_mask, the captions with one word swapped: the loss then adds contrast_weight times
    `generator.contrast.contrast_loss` (a second forward pass, under the swapped captions).
    """
    bits = batch["bits"]
    b = bits[0].shape[0]
    inputs = teacher_forcing_inputs(quantizer, bits, batch["latent_grid"], self_correction_prob, generator, passes)
    drop = torch.rand(b, generator=generator, device=generator.device).to(bits[0].device) < cfg_dropout
    logits = model(inputs, batch.get("text_states"), batch.get("text_mask"), drop_text=drop, target_bits=bits)
    loss, stats = head_loss(logits, bits)
    if contrast_weight > 0:
        if batch.get("negative_text_states") is None:
            raise ValueError("contrast_weight > 0 needs swapped captions in the batch (negative_text_states): "
                             "build the token cache with --contrast-words")
        swapped = model(inputs, batch["negative_text_states"], batch["negative_text_mask"], target_bits=bits)
        contrast, contrast_stats = contrast_loss(clip_nats(logits, bits), clip_nats(swapped, bits), ~drop, contrast_tau)
        loss, stats = loss + contrast_weight * contrast, {**stats, **contrast_stats}
    return loss, stats
