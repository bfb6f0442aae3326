"""3D Fourier position embedding of a level's (t, h, w) grid, valid for any grid size.

Positions of PyraTok's next-scale transformer: tokens of every level share normalised coordinates.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from einops import rearrange


def grid_coords(grid: Sequence[int], device=None) -> torch.Tensor:
    """(n, 3) cell centres of a (t, h, w) grid in normalised [0, 1] coordinates, raster order."""
    axes = [(torch.arange(g, device=device, dtype=torch.float32) + 0.5) / g for g in grid]
    t, h, w = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([t, h, w], dim=-1).reshape(-1, 3)


class FourierPosition(nn.Module):
    """3D position embedding from sin/cos features of normalised coordinates: any grid size works."""

    def __init__(self, width: int, num_freqs: int = 24, max_freq: float = 256.0):
        super().__init__()
        freqs = math.pi * torch.logspace(0, math.log10(max_freq), num_freqs)
        self.register_buffer("freqs", freqs, persistent=False)
        self.proj = nn.Linear(3 * 2 * num_freqs, width)
        nn.init.normal_(self.proj.weight, std=(3 * num_freqs) ** -0.5)  # unit-scale output: positions count from step 0
        nn.init.zeros_(self.proj.bias)

    def forward(self, grid: Sequence[int]) -> torch.Tensor:
        coords = grid_coords(grid, self.freqs.device)  # (n, 3)
        angles = rearrange(coords[:, :, None] * self.freqs, "n a f -> n (a f)")
        return self.proj(torch.cat([angles.sin(), angles.cos()], dim=-1).to(self.proj.weight.dtype))
