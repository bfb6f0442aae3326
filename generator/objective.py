"""The generator's training objective: teacher-forced next-scale bit prediction.

PyraTok generation stage, trained like VAR/Infinity: inputs z_hat_<l from the cached pyramid,
~10% null text (for CFG), optional bitwise self-correction (Infinity), the head's loss per level
(bitwise BCE, or the cross-entropy of group codes: generator.heads).
Letters: b - batch, t/h/w - a level's grid, k - bits, c - latent channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .contrast import contrast_loss
from .finest_conv import given_bits
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


@torch.no_grad()
def finest_edge_weights(z_hat: torch.Tensor, edge_share: float, flat_weight: float) -> torch.Tensor:
    """Loss weights (b, t, h, w) of the finest level's tokens: 1 at each clip's `edge_share` of tokens where
    the coarser levels change most, `flat_weight` elsewhere.

    z_hat: z_hat_<L (b, c, t, h, w) on the finest grid. A token's change is the largest, over its 3x3
    neighbourhood, of the summed absolute differences to the next token across and down: the coarse levels
    blur an edge over a few tokens, and the finest level draws where inside them it runs. The share is a
    per-clip quantile, so it needs no threshold in latent units and holds for any clip; tokens where nothing
    changes are never edges.
    """
    if not 0.0 < edge_share <= 1.0:
        raise ValueError(f"edge_share must be in (0, 1], got {edge_share}")
    across = F.pad((z_hat[..., :, 1:] - z_hat[..., :, :-1]).abs(), (0, 1))  # (b, c, t, h, w)
    down = F.pad((z_hat[..., 1:, :] - z_hat[..., :-1, :]).abs(), (0, 0, 0, 1))
    change = F.max_pool3d((across + down).sum(1, keepdim=True), (1, 3, 3), 1, (0, 1, 1))[:, 0]  # (b, t, h, w)
    cut = change.flatten(1).float().quantile(1.0 - edge_share, dim=1).view(-1, 1, 1, 1)
    edge = (change >= cut) & (change > 0)  # a clip with fewer changing tokens than the share: just those
    return torch.where(edge, 1.0, flat_weight).to(z_hat.dtype)


def generator_loss(model, quantizer, batch: dict, generator: torch.Generator, cfg_dropout: float = 0.1,
                   self_correction_prob: float = 0.0, passes: int = 1, contrast_weight: float = 0.0,
                   contrast_tau: float = 0.01, finest_edge_share: float = 0.0, finest_flat_weight: float = 1.0,
                   finest_conv_passes: int = 1):
    """Loss and detached stats for one batch of the token cache (see TokenCacheDataset.collate);
    `passes`: the model's finest_passes. finest_edge_share > 0: the finest level's tokens weigh 1 where the
    coarser levels its step reads (z_hat_<L) change most and finest_flat_weight elsewhere
    (`finest_edge_weights`); stats stay unweighted. finest_conv_passes > 1 (the model's; its FinestConv
    draws in passes): each clip is given a random share of its finest bits (`given_bits`) and the finest
    level's loss and stats count the others only.

    batch: bits (list of (b, t_l, h_l, w_l, k) in {-1, +1}), text_states (b, s, d) or None,
    text_mask (b, s) or None, latent_grid (t, h, w); with contrast_weight > 0 also negative_text_states /
    negative_text_mask, the captions with one word swapped: the loss then adds contrast_weight times
    `generator.contrast.contrast_loss` (a second forward pass, under the swapped captions).
    """
    bits = batch["bits"]
    b = bits[0].shape[0]
    inputs = teacher_forcing_inputs(quantizer, bits, batch["latent_grid"], self_correction_prob, generator, passes)
    drop = torch.rand(b, generator=generator, device=generator.device).to(bits[0].device) < cfg_dropout
    finest = len(bits) - 1
    given = given_bits(bits[finest], generator) if finest_conv_passes > 1 else None  # (b, t, h, w, k)
    finest_given = None if given is None else (bits[finest], given)
    logits = model(inputs, batch.get("text_states"), batch.get("text_mask"), drop_text=drop, target_bits=bits,
                   finest_given=finest_given)
    weights = None
    if finest_edge_share > 0:
        z_hat = inputs[finest][:, :quantizer.config.latent_channels]  # finest step z_hat_<L (b, c, t, h, w)
        weights = [None] * finest + [finest_edge_weights(z_hat, finest_edge_share, finest_flat_weight)]
    if given is not None:
        to_draw = (~given).float()  # (b, t, h, w, k)
        edge = 1.0 if weights is None else weights[finest][..., None]
        weights = [None] * finest + [to_draw * edge]
    loss, stats = head_loss(logits, bits, weights)
    if given is not None:
        per_bit = F.binary_cross_entropy_with_logits(logits[finest].detach().float(), (bits[finest] + 1) / 2,
                                                     reduction="none")
        stats[f"loss/level{finest}"] = (per_bit * to_draw).sum() / to_draw.sum().clamp_min(1.0)
    if contrast_weight > 0:
        if batch.get("negative_text_states") is None:
            raise ValueError("contrast_weight > 0 needs swapped captions in the batch (negative_text_states): "
                             "build the token cache with --contrast-words")
        swapped = model(inputs, batch["negative_text_states"], batch["negative_text_mask"], target_bits=bits,
                        finest_given=finest_given)
        contrast, contrast_stats = contrast_loss(clip_nats(logits, bits), clip_nats(swapped, bits), ~drop, contrast_tau)
        loss, stats = loss + contrast_weight * contrast, {**stats, **contrast_stats}
    return loss, stats
