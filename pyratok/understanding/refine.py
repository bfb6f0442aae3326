"""Edge-aware refinement of upsampled heatmaps with the video itself as the guide.

Token similarity lives on the latent grid (8x coarser than the pixels); upsampled bilinearly it is a
soft blob around the object. The guided filter (He, Sun and Tang, "Guided Image Filtering", 2010) fits
the heatmap, window by window, as a linear function of the frame's brightness, so that its edges move
to the frame's own edges. Letters: T - frames, H/W - pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """(T, H, W) -> mean over the (2r+1)^2 window around each pixel, the window cut at the borders."""
    x4 = rearrange(x, "T H W -> T 1 H W")
    mean = F.avg_pool2d(x4, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)
    return rearrange(mean, "T 1 H W -> T H W")


def guided_filter(heat: torch.Tensor, guide: torch.Tensor, radius: int, eps: float = 1e-3) -> torch.Tensor:
    """Filter `heat` (T, H, W) guided by `guide` (T, H, W), both float; returns (T, H, W).

    `radius`: window half-size in pixels (about one token: the spatial factor); `eps`: how strongly flat
    guide regions smooth the heatmap instead of following the guide (guide values in [0, 1]).
    """
    if heat.shape != guide.shape or heat.dim() != 3:
        raise ValueError(f"heat and guide must both be (T, H, W), got {tuple(heat.shape)} and {tuple(guide.shape)}")
    if radius < 1 or eps <= 0:
        raise ValueError(f"guided_filter needs radius >= 1 and eps > 0, got radius={radius!r}, eps={eps!r}")
    heat, guide = heat.float(), guide.float()
    mean_g, mean_h = box_mean(guide, radius), box_mean(heat, radius)
    cov = box_mean(guide * heat, radius) - mean_g * mean_h
    var = box_mean(guide * guide, radius) - mean_g * mean_g
    slope = cov / (var + eps)
    offset = mean_h - slope * mean_g
    return box_mean(slope, radius) * guide + box_mean(offset, radius)


def video_brightness(video: torch.Tensor) -> torch.Tensor:
    """(3, T, H, W) in [-1, 1] -> (T, H, W) brightness in [0, 1] (mean of the channels)."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"guide video must be (3, T, H, W), got {tuple(video.shape)}")
    return (video.float().mean(0) + 1) / 2
