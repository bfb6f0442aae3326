"""Zero-shot segmentation: where in each frame does a text query appear?

Implements PyraTok's zero-shot video segmentation (§5) from per-token text similarity: the finest level's
volume (the coarser levels are context; averaged in, they spread every map over the whole frame) mapped to
video frames, upsampled to pixels, given the frames' own edges by a guided filter when the video is at hand
(`refine`), normalised per video to [0, 1], then thresholded.
Letters: t/h/w - finest latent grid, T/H/W - video frames and pixels.

Defaults, chosen on calibration clips (multi-object Shapes, seed 9100; the benchmark uses other seeds):
a guided-filter window of two tokens (radius 2 x the spatial factor: an object and its surroundings in one
window) and a mask at 0.6 of each video's heatmap range (mask IoU 0.48 there; Otsu's cut on the same
heatmaps keeps the halo around each object: 0.29).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange

from .common import (as_video_batch, check_text, encode_videos, fitted_size, frame_to_latent,
                     query_volume)
from .refine import guided_filter, video_brightness
from .thresholds import resolve_threshold


SEGMENT_LEVELS = (-1,)  # the finest pyramid level
MASK_THRESHOLD = 0.6  # on heatmaps normalised to [0, 1] per video


class SegmentationResult(NamedTuple):
    heatmaps: torch.Tensor  # (T, H, W) float in [0, 1], normalised over the whole video
    masks: torch.Tensor  # (T, H, W) bool: heatmaps >= threshold
    threshold: float  # on the normalised heatmaps


def pixel_similarity(volume: torch.Tensor, size: tuple[int, int, int], temporal_factor: int,
                     spatial_factor: int) -> torch.Tensor:
    """(t, h, w) similarity on the fitted video's latent grid -> (T, H, W): frames mapped, bilinear up, cropped."""
    T, H, W = size
    _, H2, W2 = fitted_size(T, H, W, temporal_factor, spatial_factor)
    if tuple(volume.shape[-2:]) != (H2 // spatial_factor, W2 // spatial_factor):
        raise ValueError(f"volume grid {tuple(volume.shape)} does not belong to a {T}x{H}x{W} video")
    per_frame = volume[frame_to_latent(T, temporal_factor).to(volume.device)]  # (T, h, w)
    up = F.interpolate(rearrange(per_frame, "T h w -> T 1 h w").float(), size=(H2, W2), mode="bilinear",
                       align_corners=False)
    return rearrange(up, "T 1 H W -> T H W")[:, :H, :W]


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Min–max to [0, 1] over the whole tensor; a constant tensor becomes all zeros."""
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def segment_volume(volume: torch.Tensor, size: tuple[int, int, int], temporal_factor: int, spatial_factor: int,
                   threshold: float | str | None = MASK_THRESHOLD, guide: torch.Tensor | None = None,
                   radius: int | None = None) -> SegmentationResult:
    """(t, h, w) similarity -> SegmentationResult at pixel size (T, H, W).

    threshold: a value in [0, 1] on the normalised heatmaps, or "otsu" / None (Otsu's cut) or "midpoint".
    guide: the video (3, T, H, W) in [-1, 1]; if given, the upsampled similarity is guided-filtered
    with its brightness before normalisation, in windows of `radius` pixels (default 2 x spatial factor).
    """
    heat = pixel_similarity(volume, size, temporal_factor, spatial_factor)
    if guide is not None:
        if tuple(guide.shape[1:]) != tuple(size):
            raise ValueError(f"guide video {tuple(guide.shape)} does not match the size {tuple(size)}")
        radius = 2 * spatial_factor if radius is None else radius
        heat = guided_filter(heat, video_brightness(guide.to(heat.device)), radius=radius)
    heat = normalise(heat)
    if isinstance(threshold, (int, float)) and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"a fixed segmentation threshold applies to [0, 1] heatmaps, got {threshold!r}")
    value = resolve_threshold(heat, threshold)
    return SegmentationResult(heat, heat >= value, value)


def segment(tokenizer, text_encoder, video: torch.Tensor, text: str,
            threshold: float | str | None = MASK_THRESHOLD, refine: bool = True) -> SegmentationResult:
    """Heatmaps and masks of `text` in one video (3, T, H, W) in [-1, 1] (any size, see `common`).

    threshold: a value in [0, 1] on the normalised heatmaps (default `MASK_THRESHOLD`), "otsu" or None
    (adaptive, over all pixels of the video), or "midpoint" (0.5). refine: snap the heatmaps to the
    video's edges (guided filter, see `refine`); False keeps the bilinearly upsampled token similarity.
    """
    text = check_text(text)
    video = as_video_batch(video)
    if video.shape[0] != 1:
        raise ValueError(f"segment takes one video (3, T, H, W), got a batch of {video.shape[0]}")
    size = tuple(video.shape[-3:])
    pyramid = encode_videos(tokenizer, video)
    volume = query_volume(tokenizer, text_encoder, pyramid, [text], SEGMENT_LEVELS)[0, 0]  # (t, h, w)
    return segment_volume(volume.cpu(), size, tokenizer.temporal_factor, tokenizer.spatial_factor, threshold,
                          guide=video[0].cpu() if refine else None)
