"""LaPQ: language-aligned pyramidal quantization into one shared K-bit binary codebook.

Implements PyraTok §3.2: residual coarse-to-fine levels over (t, h, w) grids, lateral inputs
from several encoder depths, text cross-attention at every level, a shared lookup-free
binary codebook with a shared dequantizer and a per-level scale, and grouped entropy. With
`refine_groups`, a token's bit groups are chosen one after another, each from the residual the
earlier ones left (successive approximation inside a token; the dequantizer stays one linear map).
Letters: b - batch, c - latent channels, d - hidden width, n - tokens of a level, k - bits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .bit_whitening import BitWhitening
from .pyramid import Grid, TokenPyramid, level_grids, resample
from .quant_losses import commitment_loss, grouped_entropy, usage_stats
from .text_attention import TextCrossAttention


@dataclass
class LaPQConfig:
    latent_channels: int = 8
    tap_channels: list[int] = field(default_factory=list)
    level_strides: list[tuple[int, int, int]] = field(
        default_factory=lambda: [(8, 8, 8), (4, 4, 4), (2, 2, 2), (1, 1, 1)]
    )
    num_bits: int = 16
    bits_per_group: int = 8
    hidden_dim: int = 64
    text_dim: int = 384
    text_heads: int = 4
    use_text: bool = True
    text_gate_init: float = 0.5
    entropy_temperature: float = 1.0  # over unit-magnitude soft bits
    usage_entropy_weight: float = 1.0
    # running ZCA whitening of each level's bit logits per group (balanced, decorrelated bits)
    whiten_bits: bool = False
    whiten_momentum: float = 0.01
    # choose a token's bit groups one after another, each from the residual the earlier groups left
    # (successive approximation: later groups refine magnitudes; otherwise all k bits are signs of
    # one projection, which code a residual's direction but hardly its size). Bits and dequantizer
    # are the same either way.
    refine_groups: bool = False

    def __post_init__(self):
        if not 1 <= self.num_bits <= 62:
            raise ValueError(f"num_bits must be in [1, 62], got {self.num_bits}")
        if self.num_bits % self.bits_per_group:
            raise ValueError(f"num_bits={self.num_bits} must be a multiple of bits_per_group={self.bits_per_group}")
        if self.bits_per_group > 12:
            raise ValueError(f"bits_per_group={self.bits_per_group} would need 2^{self.bits_per_group} codes per group")
        self.level_strides = [tuple(s) for s in self.level_strides]

    @property
    def num_levels(self) -> int:
        return len(self.level_strides)


@dataclass
class LaPQOutput:
    pyramid: TokenPyramid
    latent: torch.Tensor  # (b, c, t, h, w) z_hat, straight-through to the encoder
    bits_st: list[torch.Tensor]  # per level (b, t, h, w, k): hard values, straight-through gradients
    commitment: torch.Tensor
    entropy: torch.Tensor
    latent_error: torch.Tensor  # (z_hat - sg z)^2 + 0.25 (z - sg z_hat)^2: VQ-VAE's codebook + commitment
    stats: dict


class LaPQ(nn.Module):
    """Quantize a latent (b, c, t, h, w) plus encoder taps into a `TokenPyramid`."""

    def __init__(self, config: LaPQConfig):
        super().__init__()
        self.config = cfg = config
        c, d, k, n_levels = cfg.latent_channels, cfg.hidden_dim, cfg.num_bits, cfg.num_levels
        self.in_proj = nn.Linear(c, d)  # shared: residual latent -> hidden
        tap_dim = sum(cfg.tap_channels)
        self.laterals = nn.ModuleList(nn.Linear(tap_dim, d) for _ in range(n_levels)) if tap_dim else None
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(n_levels))
        # after the text attention: caption features would otherwise set the logits' scale, not the video
        self.bit_norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(n_levels))
        self.text_attn = (
            nn.ModuleList(TextCrossAttention(d, cfg.text_dim, cfg.text_heads, cfg.text_gate_init) for _ in range(n_levels))
            if cfg.use_text
            else None
        )
        self.to_bits = nn.Linear(d, k)  # shared codebook projection
        self.from_bits = nn.Linear(k, c, bias=False)  # shared dequantizer
        self.whitening = BitWhitening(n_levels, k, cfg.bits_per_group, cfg.whiten_momentum) if cfg.whiten_bits else None
        self.level_scale = nn.Parameter(torch.full((n_levels, c), 0.25))  # z_hat starts near latent scale
        nn.init.normal_(self.from_bits.weight, std=k**-0.5)
        nn.init.zeros_(self.in_proj.bias)  # at init the bits should follow the input, not a bias

    # --- geometry -------------------------------------------------------------------------
    def grids_for(self, latent_grid: Grid) -> list[Grid]:
        return level_grids(tuple(latent_grid), self.config.level_strides)

    # --- dequantization: all that generation needs --------------------------------------
    def dequantize_level(self, bits: torch.Tensor, level: int, part: slice = slice(None)) -> torch.Tensor:
        """(b, t, h, w, k) bits of `level` -> (b, c, t, h, w) on the level's own grid.

        With `part`, `bits` holds only those bits (..., len) and their share of the sum comes back."""
        weight = self.from_bits.weight[:, part]
        z = F.linear(bits.to(weight.dtype), weight) * self.level_scale[level]
        return rearrange(z, "b t h w c -> b c t h w")

    def reconstruct(self, bits: list[torch.Tensor], latent_grid: Grid) -> torch.Tensor:
        """z_hat on the latent grid from the first len(bits) levels (coarse to fine)."""
        z_hat = None
        for level, b in enumerate(bits):
            part = resample(self.dequantize_level(b, level), latent_grid)
            z_hat = part if z_hat is None else z_hat + part
        return z_hat

    def level_inputs(self, bits: list[torch.Tensor], latent_grid: Grid) -> list[torch.Tensor]:
        """Teacher-forcing inputs: z_hat_<l resampled to grid l, for l = 0..len(bits)-1 (zeros at l = 0)."""
        grids = self.grids_for(latent_grid)
        first = bits[0]
        c = self.config.latent_channels
        z_hat = first.new_zeros(first.shape[0], c, *latent_grid)
        inputs = []
        for level, b in enumerate(bits):
            inputs.append(resample(z_hat, grids[level]))
            z_hat = z_hat + resample(self.dequantize_level(b, level), latent_grid)
        return inputs

    def decode_pyramid(self, pyramid: TokenPyramid) -> torch.Tensor:
        return self.reconstruct(pyramid.bits, pyramid.latent_grid)

    # --- quantization ---------------------------------------------------------------------
    def _logits(self, residual, lateral, level: int, part: slice, text_states, text_mask) -> torch.Tensor:
        """Bit logits (b, t, h, w, |part|) of `level` for the residual (b, c, t, h, w) on the level's grid."""
        u = self.in_proj(rearrange(residual, "b c t h w -> b t h w c"))
        if lateral is not None:
            u = u + lateral
        u = self.norms[level](u)
        if self.text_attn is not None and text_states is not None:
            u_bnd = rearrange(u, "b t h w d -> b (t h w) d")
            u = self.text_attn[level](u_bnd, text_states, text_mask).reshape(u.shape)
        weight, bias = self.to_bits.weight[part], self.to_bits.bias[part]
        logits = F.linear(self.bit_norms[level](u), weight, bias)
        if self.whitening is not None:
            groups = slice(part.start // self.config.bits_per_group, part.stop // self.config.bits_per_group)
            logits = self.whitening(logits, level, groups=groups)
        return logits

    def forward(
        self,
        z: torch.Tensor,
        taps: list[torch.Tensor] | None = None,
        text_states: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> LaPQOutput:
        """z: (b, c, t, h, w); taps: encoder features (b, c_i, t_i, h_i, w_i); text: (b, s, d_text), mask (b, s).

        With `whiten_bits`, every call in training mode updates the running whitening statistics,
        captioned or not: they describe the tokens of both uses (generation encodes with the
        caption, understanding without).
        """
        cfg = self.config
        k = cfg.num_bits
        latent_grid = tuple(z.shape[-3:])
        grids = self.grids_for(latent_grid)
        if self.laterals is not None:
            if taps is None or [t.shape[1] for t in taps] != list(cfg.tap_channels):
                got = None if taps is None else [t.shape[1] for t in taps]
                raise ValueError(f"LaPQ expects taps with channels {cfg.tap_channels}, got {got}")
        z_hat = torch.zeros_like(z)
        bits, bits_st, commits, entropies, stats = [], [], [], [], {}
        j = cfg.bits_per_group
        parts = [slice(g, g + j) for g in range(0, k, j)] if cfg.refine_groups else [slice(0, k)]
        for level, grid in enumerate(grids):
            lateral = None
            if self.laterals is not None:
                tap_l = torch.cat([resample(t, grid) for t in taps], dim=1)
                lateral = self.laterals[level](rearrange(tap_l, "b c t h w -> b t h w c"))
            hard_parts, soft_parts = [], []
            for part in parts:
                residual = resample(z - z_hat, grid)  # what coarser levels and earlier groups left unexplained
                logits = self._logits(residual, lateral, level, part, text_states, text_mask)  # (b, t, h, w, |part|)
                hard = torch.where(logits >= 0, 1.0, -1.0).to(logits.dtype)
                # on the sphere of the codes (radius sqrt(|part|)), as in binary spherical quantization: the
                # straight-through gradient cannot grow the logits without bound, commitment stays bounded
                soft = logits * ((part.stop - part.start) ** 0.5 / logits.norm(dim=-1, keepdim=True).clamp_min(1e-6))
                b_st = soft + (hard - soft).detach()  # straight-through
                z_hat = z_hat + resample(self.dequantize_level(b_st, level, part), latent_grid)
                hard_parts.append(hard)
                soft_parts.append(soft)
            hard, soft = torch.cat(hard_parts, -1), torch.cat(soft_parts, -1)  # (b, t, h, w, k)
            bits_st.append(soft + (hard - soft).detach())
            bits.append(hard.detach())
            commits.append(commitment_loss(soft, hard))
            entropies.append(
                grouped_entropy(soft, cfg.bits_per_group, cfg.entropy_temperature, cfg.usage_entropy_weight)
            )
            stats[f"utilization/level{level}"] = usage_stats(hard, cfg.bits_per_group)["utilization"]
        pyramid = TokenPyramid(bits, latent_grid, latent=z_hat.detach())
        return LaPQOutput(
            pyramid=pyramid,
            latent=z_hat,
            bits_st=bits_st,
            commitment=torch.stack(commits).mean(),
            entropy=torch.stack(entropies).mean(),
            latent_error=(z_hat - z.detach()).pow(2).mean() + 0.25 * (z - z_hat.detach()).pow(2).mean(),
            stats=stats,
        )
