"""Running whitening of bit logits: balanced, decorrelated bits in every group of the codebook.

Serves LaPQ's codebook utilization (PyraTok §3.2, "up to 95%"): a group of j bits uses all of
its 2^j codes evenly only if each bit is on half the time and the bits are independent. The
grouped entropy loss asks for that softly; this layer makes it hold for the logits' first two
moments: per level and group, logits are centred by a running mean and ZCA-whitened by a running
covariance, the way batch norm keeps running statistics (updated in training, frozen in eval).
ZCA is the whitening closest to the identity, so a model fine-tuned with it keeps its bits' meanings.
Letters: n - tokens, l - levels, g - groups, j - bits per group.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange


class BitWhitening(nn.Module):
    def __init__(self, num_levels: int, num_bits: int, bits_per_group: int, momentum: float = 0.01,
                 eps: float = 0.01):
        super().__init__()
        if not 0 < momentum <= 1:
            raise ValueError(f"whitening momentum must be in (0, 1], got {momentum}")
        self.j, self.momentum, self.eps = bits_per_group, momentum, eps
        g = num_bits // bits_per_group
        self.register_buffer("running_mean", torch.zeros(num_levels, g, bits_per_group))
        self.register_buffer("running_cov", torch.eye(bits_per_group).repeat(num_levels, g, 1, 1))
        self.register_buffer("num_updates", torch.zeros(num_levels, dtype=torch.long))
        self.frozen = False  # True: statistics stay as they are in training too (a stage that keeps the tokens)

    @torch.no_grad()
    def _update(self, x: torch.Tensor, level: int, groups: slice) -> None:
        """x: (n, g, j) float32 logits of one batch for `groups`; the first updates average, later ones decay.

        A level's update count advances with its last group, so groups updated one call at a time
        (LaPQ's `refine_groups`) share one schedule."""
        count = int(self.num_updates[level])
        rate = max(self.momentum, 1.0 / (count + 1))
        mean = x.mean(0)  # (g, j)
        if x.shape[0] < 2:  # one token has no spread: keep the running covariance
            cov = self.running_cov[level, groups]
        else:
            centred = x - mean
            cov = torch.einsum("ngi,ngj->gij", centred, centred) / (x.shape[0] - 1)
        self.running_mean[level, groups].lerp_(mean, rate)
        self.running_cov[level, groups].lerp_(cov, rate)
        if groups.stop is None or groups.stop >= self.running_mean.shape[1]:
            self.num_updates[level] += 1

    def matrices(self, level: int, groups: slice = slice(None)) -> torch.Tensor:
        """(g, j, j) ZCA whitening matrices of `level`'s `groups`; eigenvalues floored at eps x their mean."""
        eigvals, eigvecs = torch.linalg.eigh(self.running_cov[level, groups])  # (g, j), (g, j, j)
        floor = self.eps * eigvals.mean(-1, keepdim=True).clamp_min(1e-12)
        scale = eigvals.clamp_min(0).add(floor).rsqrt()
        return eigvecs @ torch.diag_embed(scale) @ eigvecs.transpose(-1, -2)

    def forward(self, logits: torch.Tensor, level: int, update: bool = True, groups: slice = slice(None)) -> torch.Tensor:
        """logits (..., k) -> whitened logits (..., k); statistics update in training mode when `update`.

        `groups` selects the bit groups that `logits` holds (all of the level's by default)."""
        with torch.autocast(logits.device.type, enabled=False):
            x = rearrange(logits.float(), "... (g j) -> ... g j", j=self.j)
            if self.training and update and not self.frozen:
                self._update(x.detach().reshape(-1, *x.shape[-2:]), level, groups)
            white = torch.einsum("gij,...gj->...gi", self.matrices(level, groups), x - self.running_mean[level, groups])
            return rearrange(white, "... g j -> ... (g j)").to(logits.dtype)
