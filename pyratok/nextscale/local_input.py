"""`LocalInput`: a 3D convolution over a level's input grid, added to each token's own input projection.

The next-scale transformer embeds each token from its own z_hat_<l vector; where z_hat_<l is a blur of
an edge, where the edge runs lies in the neighbours' vectors, which a token then reaches only through
attention. With `NextScaleConfig.input_conv` = k (odd), every token also sees its k x k x k neighbourhood
of the input grid directly. The convolution starts at zero, so a model grown from a saved one without it
(`pyratok.checkpoints.load_saved_weights(grow=True)`) computes what that one did until trained. Its sum
over the k^3 taps is divided by k^3: Adam moves every weight by about the learning rate per step, so
without it one step would move a token's embedding k^3 times as much through the convolution as through
the per-token projection (a generator grown at depth 8 trained 0.025 nats per bit worse at the finest
level in its first 40 steps than without the convolution).
Letters: b - batch, c - input channels, t/h/w - a level's grid, d - width.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange


class LocalInput(nn.Module):
    """(b, c, t, h, w) -> (b, t*h*w, d) in raster order: a same-size k^3 convolution, zero at the start."""

    def __init__(self, channels: int, width: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, width, kernel, padding=kernel // 2)
        self.taps = kernel**3
        self.start_as_identity()

    def start_as_identity(self) -> None:
        """Zero the convolution: the token embedding is the per-token projection alone until trained."""
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, level_input: torch.Tensor) -> torch.Tensor:
        return rearrange(self.conv(level_input) / self.taps, "b d t h w -> b (t h w) d")
