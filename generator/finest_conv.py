"""`FinestConv`: the finest level's bit logits from a 3D CNN over z_hat_<L and the caption.

With `GeneratorConfig.finest_head = "conv"` the transformer stops at level L-2 and this network draws
the finest level. Its step is local: given the coarser levels, the finest tokens are close to
independent of each other (a second, interleaved pass gained 0.004 nats per bit), and what a token
must know is where an edge runs inside its cell, which lies in how the coarse levels' blur falls off
across its neighbours (bench/edge_probe.py: a CNN over z_hat_<L pays 0.275 nats per bit at the
boundary tokens where the transformer pays 0.428). Convolutions read that directly; the transformer
then attends over the coarse levels only (225 tokens a 17x128x128 clip instead of 1,505).
The caption enters as FiLM (a scale and a shift per channel) from the mean of its text states, the
learned null text included, so classifier-free guidance acts on this step as on the others.
Trained as a generator's finest step on Shapes (README, "The finest level drawn by a convolution") it pays
0.378 at the boundary but more than the transformer in the background, where the whole clip and the text
in every block help: the coarse levels gain, the drawn shapes do not.
With `features` (`GeneratorConfig.finest_conv_features`) it also reads the transformer's last step: the
hidden states that drew level L-2, which attended to the whole clip and to every text token in every
block, resampled to the finest grid and added to the first convolution's output through a 1x1
convolution that starts at zero (a saved conv generator without it loads and computes what it did).
With `given` (`GeneratorConfig.finest_conv_passes` > 1) it also reads the finest bits drawn so far: each
bit's value where drawn and 0 elsewhere, and a drawn flag per bit, through a 3x3x3 convolution that starts
at zero (a saved one-pass conv generator loads and computes what it did). Trained with a random share of
each clip's finest bits given (`given_bits`), it draws the level in passes, each seeing the bits the
earlier passes drew, inside its token and around it (`generator.sampling.draw_finest_in_passes`). On Shapes
a boundary token's later bits stay near a coin with 75% of the bits given, and the samples do not change
(README, "The finest level drawn in passes").
Letters: b - batch, c - latent channels, t/h/w - the finest grid, d - width, s - text length, k - bits,
e - the transformer's width, t2/h2/w2 - level L-2's grid.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pyratok.null_text import mean_text
from pyratok.pyramid import resample


def given_bits(bits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(b, t, h, w, k) bool: the finest bits a training clip is given, as a pass of drawing in passes sees
    them. Each clip draws u ~ U(0, 1) and leaves cos(pi u / 2) of its bits to predict (MaskGIT's cosine
    schedule, the share `draw_finest_in_passes` leaves after each pass), each bit given at random."""
    b = bits.shape[0]
    u = torch.rand(b, generator=generator, device=generator.device).to(bits.device)
    left = torch.cos(torch.pi / 2 * u).view(b, 1, 1, 1, 1)  # (b, 1, 1, 1, 1) share still to draw
    return torch.rand(bits.shape, generator=generator, device=generator.device).to(bits.device) >= left


def pass_of_bits(order: torch.Tensor, passes: int) -> torch.Tensor:
    """(b, t, h, w, k) long: the pass each finest bit is drawn in, from each video's random order (b, t, h, w, k)
    (uniforms; lowest first). After pass p, 1 - cos(pi (p + 1) / (2 P)) of a video's bits are drawn:
    few at first, when the fewest are known, most at the end (the share `given_bits` trains on)."""
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    n = order[0].numel()
    rank = order.flatten(1).argsort(1).argsort(1).view(order.shape)  # (b, t, h, w, k) place in the order
    drawn_after = torch.tensor([round(n * (1 - math.cos(math.pi * (p + 1) / (2 * passes)))) for p in range(passes)],
                               device=order.device)  # (P,) bits drawn after each pass; the last is n
    drawn_after[-1] = n
    return torch.searchsorted(drawn_after, rank, right=True)


class FeatureInput(nn.Module):
    """(b, t2, h2, w2, e) transformer features -> (b, d, t, h, w) on the finest grid: resampled, then a 1x1
    convolution, zero at the start."""

    def __init__(self, feature_dim: int, width: int):
        super().__init__()
        self.proj = nn.Conv3d(feature_dim, width, 1)
        self.start_as_identity()

    def start_as_identity(self) -> None:
        """Zero the projection: the conv computes what it did without the features until trained."""
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, features: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        if features.dim() != 5 or features.shape[-1] != self.proj.in_channels:
            raise ValueError(f"the transformer features must be (b, t2, h2, w2, {self.proj.in_channels}), "
                             f"got {tuple(features.shape)}")
        x = features.permute(0, 4, 1, 2, 3).to(self.proj.weight.dtype)  # (b, e, t2, h2, w2)
        return self.proj(resample(x, grid))  # (b, d, t, h, w)


class GivenInput(nn.Module):
    """(b, t, h, w, k) finest bits and their (b, t, h, w, k) given flags -> (b, d, t, h, w): a 3x3x3
    convolution over each bit's given value (0 where not given) and its flag, zero at the start."""

    def __init__(self, num_bits: int, width: int):
        super().__init__()
        self.conv = nn.Conv3d(2 * num_bits, width, 3, padding=1)
        self.start_as_identity()

    def start_as_identity(self) -> None:
        """Zero the convolution: the conv computes what it did without the given bits until trained."""
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, bits: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        if bits.shape != given.shape or bits.shape[-1] * 2 != self.conv.in_channels:
            raise ValueError(f"given bits and flags must both be (b, t, h, w, {self.conv.in_channels // 2}), "
                             f"got {tuple(bits.shape)} and {tuple(given.shape)}")
        flags = given.to(self.conv.weight.dtype)
        x = torch.cat([bits.to(flags.dtype) * flags, flags], dim=-1)  # (b, t, h, w, 2k)
        return self.conv(x.permute(0, 4, 1, 2, 3))  # (b, d, t, h, w)


class FinestConv(nn.Module):
    """(b, c, t, h, w) z_hat_<L and the text (b, s, d_text) + mask [+ the transformer's last-step features
    (b, t2, h2, w2, e)] [+ the finest bits given so far and their flags, (b, t, h, w, k) each]
    -> (b, t, h, w, k) bit logits."""

    def __init__(self, channels: int, text_dim: int, num_bits: int, width: int = 64, blocks: int = 4,
                 feature_dim: int = 0, reads_given: bool = False):
        super().__init__()
        self.inp = nn.Conv3d(channels, width, 3, padding=1)
        self.features = FeatureInput(feature_dim, width) if feature_dim else None
        self.given = GivenInput(num_bits, width) if reads_given else None
        self.film = nn.Linear(text_dim, 2 * width)  # the caption scales and shifts every channel
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(8, width), nn.GELU(), nn.Conv3d(width, width, 3, padding=1), nn.GELU(),
                          nn.Conv3d(width, width, 3, padding=1))
            for _ in range(blocks))
        self.out = nn.Conv3d(width, num_bits, 1)

    def forward(self, z_hat: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor | None = None,
                features: torch.Tensor | None = None, given: tuple[torch.Tensor, torch.Tensor] | None = None):
        """given: (bits, flags), the finest bits drawn so far; None: none (for a FinestConv that reads them,
        all flags 0: its first pass)."""
        if z_hat.dim() != 5 or z_hat.shape[1] != self.inp.in_channels:
            raise ValueError(f"the finest level's input must be (b, {self.inp.in_channels}, t, h, w), "
                             f"got {tuple(z_hat.shape)}")
        if (features is None) != (self.features is None):
            raise ValueError(f"this FinestConv {'reads' if self.features is not None else 'takes no'} transformer "
                             f"features, got {None if features is None else tuple(features.shape)}")
        text = mean_text(text_states.to(self.film.weight.dtype), text_mask)  # (b, d_text)
        scale, shift = self.film(text)[:, :, None, None, None].chunk(2, dim=1)  # (b, d, 1, 1, 1) each
        x = self.inp(z_hat.to(self.inp.weight.dtype))  # (b, d, t, h, w)
        if features is not None:
            x = x + self.features(features, tuple(z_hat.shape[-3:]))
        if given is not None and self.given is None:
            raise ValueError("this FinestConv reads no given bits (finest_conv_passes 1); got some")
        if self.given is not None:
            if given is None:
                nothing = z_hat.new_zeros(z_hat.shape[0], *z_hat.shape[2:], self.out.out_channels)  # (b, t, h, w, k)
                given = (nothing, nothing)
            x = x + self.given(*given)
        x = x * (1 + scale) + shift
        for block in self.blocks:
            x = x + block(x)
        return self.out(F.gelu(x)).permute(0, 2, 3, 4, 1)  # (b, t, h, w, k)
