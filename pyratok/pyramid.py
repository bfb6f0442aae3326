"""The token pyramid: per-level binary codes on coarse-to-fine (t, h, w) grids.

Implements the data structure of LaPQ (PyraTok §3): level grids from strides, the
bits <-> indices mapping of the shared K-bit codebook, and the resampling between grids.
Letters: b - batch, c - channels, t/h/w - a level's grid, k - bits per token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

Grid = tuple[int, int, int]


def level_grids(latent_grid: Grid, strides: list[Grid] | tuple[Grid, ...]) -> list[Grid]:
    """Grid of each level: ceil(latent / stride), coarse to fine.

    Example: latent (5, 8, 8) with strides (8,8,8), (4,4,4), (2,2,2), (1,1,1) gives
    (1,1,1), (2,2,2), (3,4,4), (5,8,8). The last stride must be (1, 1, 1).
    """
    if tuple(strides[-1]) != (1, 1, 1):
        raise ValueError(f"the finest level must have stride (1, 1, 1), got {tuple(strides[-1])}")
    grids = [tuple(max(1, math.ceil(n / s)) for n, s in zip(latent_grid, stride)) for stride in strides]
    for coarse, fine in zip(grids, grids[1:]):
        if any(c > f for c, f in zip(coarse, fine)):
            raise ValueError(f"level grids must grow coarse to fine, got {grids}")
    return grids


def resample(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Resample (b, c, t, h, w) to `grid`: area averaging down, trilinear up, identity when equal."""
    src = tuple(x.shape[-3:])
    grid = tuple(grid)
    if src == grid:
        return x
    if all(g <= s for g, s in zip(grid, src)):
        return F.adaptive_avg_pool3d(x, grid)
    if all(g >= s for g, s in zip(grid, src)):
        return F.interpolate(x, size=grid, mode="trilinear", align_corners=False)
    # mixed: shrink the axes that shrink, then grow the rest
    mid = tuple(min(g, s) for g, s in zip(grid, src))
    return F.interpolate(F.adaptive_avg_pool3d(x, mid), size=grid, mode="trilinear", align_corners=False)


def bits_to_indices(bits: torch.Tensor) -> torch.Tensor:
    """(..., k) in {-1, +1} -> (...,) int64 index = sum_k 2^k [bit_k > 0]; exact for k <= 62."""
    k = bits.shape[-1]
    if k > 62:
        raise ValueError(f"at most 62 bits fit an int64 index, got {k}")
    weights = 2 ** torch.arange(k, device=bits.device, dtype=torch.int64)
    return ((bits > 0).to(torch.int64) * weights).sum(-1)


def indices_to_bits(indices: torch.Tensor, num_bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(...,) int64 -> (..., k) in {-1, +1}; the inverse of `bits_to_indices`."""
    if indices.numel() and (indices.min() < 0 or indices.max() >= 2**num_bits):
        raise ValueError(f"indices must lie in [0, 2^{num_bits}), got range [{int(indices.min())}, {int(indices.max())}]")
    shifts = torch.arange(num_bits, device=indices.device, dtype=torch.int64)
    on = (indices.to(torch.int64).unsqueeze(-1) >> shifts) & 1
    return (on * 2 - 1).to(dtype)


@dataclass
class TokenPyramid:
    """Binary tokens of one batch of videos, coarse to fine.

    bits[l]: (b, t_l, h_l, w_l, k) float in {-1, +1}, level l on grid grids[l].
    latent: optional (b, c, t, h, w) dequantized latent z_hat (sum of all levels).
    latent_grid: (t, h, w) of the backbone latent that the pyramid decodes to.
    """

    bits: list[torch.Tensor]
    latent_grid: Grid
    latent: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.bits:
            raise ValueError("a TokenPyramid needs at least one level")
        k = self.bits[0].shape[-1]
        for l, b in enumerate(self.bits):
            if b.dim() != 5 or b.shape[-1] != k:
                raise ValueError(f"level {l}: bits must be (b, t, h, w, {k}), got {tuple(b.shape)}")

    @property
    def num_levels(self) -> int:
        return len(self.bits)

    @property
    def num_bits(self) -> int:
        return self.bits[0].shape[-1]

    @property
    def batch_size(self) -> int:
        return self.bits[0].shape[0]

    @property
    def grids(self) -> list[Grid]:
        return [tuple(b.shape[1:4]) for b in self.bits]

    @property
    def num_tokens(self) -> int:
        """Tokens per video, all levels together."""
        return sum(math.prod(g) for g in self.grids)

    @property
    def indices(self) -> list[torch.Tensor]:
        """Per level (b, t_l, h_l, w_l) int64 codebook indices."""
        return [bits_to_indices(b) for b in self.bits]

    @classmethod
    def from_indices(cls, indices: list[torch.Tensor], num_bits: int, latent_grid: Grid) -> "TokenPyramid":
        return cls(bits=[indices_to_bits(i, num_bits) for i in indices], latent_grid=tuple(latent_grid))

    def to(self, *args, **kwargs) -> "TokenPyramid":
        latent = self.latent.to(*args, **kwargs) if self.latent is not None else None
        return TokenPyramid([b.to(*args, **kwargs) for b in self.bits], self.latent_grid, latent, dict(self.extras))

    def select(self, index) -> "TokenPyramid":
        """A sub-batch (slice, list or tensor of indices)."""
        latent = self.latent[index] if self.latent is not None else None
        return TokenPyramid([b[index] for b in self.bits], self.latent_grid, latent)

    @classmethod
    def cat(cls, pyramids: list["TokenPyramid"]) -> "TokenPyramid":
        first = pyramids[0]
        bits = [torch.cat([p.bits[l] for p in pyramids]) for l in range(first.num_levels)]
        has_latent = all(p.latent is not None for p in pyramids)
        latent = torch.cat([p.latent for p in pyramids]) if has_latent else None
        return cls(bits, first.latent_grid, latent)
