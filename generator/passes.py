"""The finest level drawn in several passes, each seeing the tokens the earlier passes drew.

A next-scale step draws all tokens of a level at once, each on its own: where neighbours are unsure
of the same edge, each places it at its own row. With `finest_passes` P > 1 the finest grid is split
into P interleaved sets (token (t, h, w) is in set (t + h + w) mod P: P = 2 is a 3D checkerboard).
Pass p reads z_hat_<L-1, the finest residual of the sets drawn before it and a "drawn" flag as
channels of its input, and its tokens of set p are kept. Teacher forcing runs the passes as blocks of
the one block-causal sequence (the finest level's, then one per later pass); each finest token is
trained in the pass that keeps it.
Letters: b - batch, c - latent channels, t/h/w - the finest grid, d - features.
"""
from __future__ import annotations

import torch


def step_grids(grids, passes: int) -> list:
    """The grid of every step of the transformer: the levels', then the finest one again per extra pass."""
    return list(grids) + [grids[-1]] * (passes - 1)


def input_channels(latent_channels: int, passes: int) -> int:
    """A step's input channels: z_hat's; with passes, also the drawn finest residual's and a "drawn" flag."""
    return latent_channels if passes == 1 else 2 * latent_channels + 1


def pass_masks(grid, passes: int, device=None) -> torch.Tensor:
    """(P, t, h, w) bool: pass p draws token (t, h, w) when (t + h + w) mod P == p."""
    t, h, w = (torch.arange(n, device=device) for n in grid)
    parity = (t[:, None, None] + h[None, :, None] + w[None, None, :]) % passes  # (t, h, w)
    return torch.stack([parity == p for p in range(passes)])


def step_input(x: torch.Tensor, passes: int, residual: torch.Tensor | None = None, drawn=None) -> torch.Tensor:
    """A step's input from z_hat_<l on its grid x (b, c, t, h, w). With passes: (b, 2c + 1, t, h, w), z_hat,
    then the finest residual (b, c, t, h, w) of the tokens already drawn (`drawn` (t, h, w); zeros for
    a level or the first pass), then `drawn` as a channel."""
    if passes == 1:
        return x
    b, _, *grid = x.shape
    mask = x.new_zeros(grid) if drawn is None else drawn.to(x.dtype)  # (t, h, w)
    seen = x.new_zeros(x.shape) if residual is None else residual.to(x.dtype) * mask
    return torch.cat([x, seen, mask.expand(b, 1, *grid)], dim=1)


def teacher_forcing_steps(quantizer, inputs: list[torch.Tensor], finest_bits: torch.Tensor, passes: int):
    """The inputs of every step from every level's input z_hat_<l and the true finest bits (b, t, h, w, k)."""
    steps = [step_input(x, passes) for x in inputs]
    if passes == 1:
        return steps
    level = len(inputs) - 1
    residual = quantizer.dequantize_level(finest_bits, level)  # (b, c, t, h, w)
    masks = pass_masks(finest_bits.shape[1:4], passes, finest_bits.device)
    for p in range(1, passes):
        steps.append(step_input(inputs[-1], passes, residual, masks[:p].any(0)))
    return steps


def merge_passes(outputs: list[torch.Tensor], num_levels: int) -> list[torch.Tensor]:
    """Per-step outputs (b, t, h, w, ...) -> per-level ones: each finest token from the pass that draws it.
    Fewer steps than levels (a partial teacher-forced pass) come back as they are."""
    passes = len(outputs) - num_levels + 1
    if passes <= 1:
        return list(outputs)
    finest = outputs[num_levels - 1:]
    masks = pass_masks(finest[0].shape[1:4], passes, finest[0].device)
    merged = finest[0]
    for p in range(1, passes):
        merged = torch.where(masks[p][..., None], finest[p], merged)  # (b, t, h, w, k or d)
    return list(outputs[:num_levels - 1]) + [merged]
