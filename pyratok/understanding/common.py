"""Shared steps of zero-shot understanding: fit videos to the tokenizer, embed text, build similarity volumes.

Supports PyraTok's zero-shot tasks (§5: classification, temporal localisation, segmentation): every task
reads the same token–text cosine volume, all pyramid levels resampled to the finest latent grid and averaged.
Letters: b - videos, m - texts, t/h/w - finest latent grid, T/H/W - video frames and pixels, d - text size.

Video sizes: the tokenizer takes T = 1 + 4k frames and H, W multiples of 8. Nothing is dropped to get
there: the last frame is repeated up to the next 1 + 4k and the right/bottom edges are replicated up to
the next multiple of 8 (`fit_video`); every per-frame or per-pixel output is cropped back to (T, H, W).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..pyramid import TokenPyramid


def check_texts(texts: str | list[str] | tuple[str, ...]) -> list[str]:
    """One string or a non-empty list of non-blank strings -> list; anything else raises ValueError."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise ValueError(f"texts must be a str or a list of str, got {type(texts).__name__}: {texts!r}")
    if len(texts) == 0:
        raise ValueError("texts is an empty list; give at least one text query")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text {i} must be a non-empty string, got {text!r}")
    return list(texts)


def check_text(text: str) -> str:
    """One non-blank string, else ValueError naming what was given."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be one non-empty string, got {text!r}")
    return text


def as_video_batch(videos: torch.Tensor) -> torch.Tensor:
    """(3, T, H, W) or (b, 3, T, H, W) float in [-1, 1] -> (b, 3, T, H, W); ValueError names what is wrong."""
    if not isinstance(videos, torch.Tensor):
        raise ValueError(f"video must be a torch.Tensor (3, T, H, W) or (b, 3, T, H, W), got {type(videos).__name__}")
    if videos.dim() == 4:
        videos = videos.unsqueeze(0)
    if videos.dim() != 5 or videos.shape[1] != 3 or min(videos.shape) == 0:
        raise ValueError(f"video must be (3, T, H, W) or (b, 3, T, H, W) with no empty axis, got {tuple(videos.shape)}")
    if not videos.is_floating_point():
        raise ValueError(f"video must be float in [-1, 1], got dtype {videos.dtype} (convert uint8 with x / 127.5 - 1)")
    lo, hi = float(videos.min()), float(videos.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1.01 or hi > 1.01:
        raise ValueError(f"video values must lie in [-1, 1], got range [{lo:.3g}, {hi:.3g}]")
    return videos


def fitted_size(num_frames: int, height: int, width: int, temporal_factor: int,
                spatial_factor: int) -> tuple[int, int, int]:
    """Smallest (T', H', W') >= (T, H, W) the tokenizer takes: T' = 1 + tf*k, H' and W' multiples of sf."""
    if min(num_frames, height, width) < 1:
        raise ValueError(f"video needs at least 1 frame of 1x1 pixels, got {(num_frames, height, width)}")
    frames = 1 + temporal_factor * math.ceil((num_frames - 1) / temporal_factor)
    sf = spatial_factor
    return frames, sf * math.ceil(height / sf), sf * math.ceil(width / sf)


def fit_video(videos: torch.Tensor, temporal_factor: int, spatial_factor: int) -> torch.Tensor:
    """(b, 3, T, H, W) -> (b, 3, T', H', W'): last frame repeated, right/bottom edges replicated (nothing cropped)."""
    _, _, T, H, W = videos.shape
    T2, H2, W2 = fitted_size(T, H, W, temporal_factor, spatial_factor)
    if T2 > T:
        tail = videos[:, :, -1:].expand(-1, -1, T2 - T, -1, -1)
        videos = torch.cat([videos, tail], dim=2)
    if (H2, W2) != (H, W):
        videos = F.pad(videos, (0, W2 - W, 0, H2 - H, 0, 0), mode="replicate")
    return videos


def encode_texts(tokenizer, text_encoder, texts: list[str]) -> torch.Tensor:
    """Pooled text (m, d) on the tokenizer's device; ValueError when d is not the tokenizer's text size."""
    pooled = text_encoder(texts).pooled
    if pooled.dim() != 2 or pooled.shape[0] != len(texts):
        raise ValueError(f"text encoder must give pooled ({len(texts)}, d), got {tuple(pooled.shape)}")
    if pooled.shape[1] != tokenizer.cfg.text_dim:
        raise ValueError(f"text encoder gives {pooled.shape[1]}-d pooled text, the tokenizer was trained "
                         f"on {tokenizer.cfg.text_dim}-d: use the text encoder it was trained with")
    return pooled.to(tokenizer.device)


@torch.no_grad()
def encode_videos(tokenizer, videos: torch.Tensor) -> TokenPyramid:
    """(b, 3, T, H, W) in [-1, 1], any size -> TokenPyramid, encoded without a caption (null text)."""
    fitted = fit_video(as_video_batch(videos), tokenizer.temporal_factor, tokenizer.spatial_factor)
    return tokenizer.encode(fitted.to(tokenizer.device, tokenizer.dtype))


@torch.no_grad()
def similarity_volume(tokenizer, pyramid: TokenPyramid, text_pooled: torch.Tensor,
                      levels: Sequence[int] | None = None) -> torch.Tensor:
    """(b, m, t, h, w) token–text cosine: each level's map resampled to the finest grid, levels averaged.

    levels: which pyramid levels to average (default all; `(-1,)` is the finest alone, the sharpest map)."""
    text_emb = tokenizer.alignment.text_embedding(text_pooled.to(tokenizer.dtype))
    bits = [b.to(tokenizer.dtype) for b in pyramid.bits]
    return tokenizer.alignment.similarity_volume(bits, text_emb, levels=levels)


@torch.no_grad()
def query_volume(tokenizer, text_encoder, pyramid: TokenPyramid, texts: list[str],
                 levels: Sequence[int] | None = None) -> torch.Tensor:
    """(b, m, t, h, w) evidence for each text query at each token: its cosine, minus the cosine of the
    head's background text when the head was trained with one (`AlignmentConfig.background_text`): how much
    more a token looks like the query than like background (thresholds stay relative: the background's
    cosine is high everywhere, so a fixed 0 misses most objects). levels: as in `similarity_volume`."""
    volume = similarity_volume(tokenizer, pyramid, encode_texts(tokenizer, text_encoder, texts), levels)
    background = tokenizer.cfg.alignment.background_text
    if background:
        pooled = encode_texts(tokenizer, text_encoder, [background])
        volume = volume - similarity_volume(tokenizer, pyramid, pooled, levels)
    return volume


def frame_to_latent(num_frames: int, temporal_factor: int) -> torch.Tensor:
    """(T,) latent frame of each video frame: frame 0 -> 0, frame f >= 1 -> 1 + (f - 1) // tf."""
    f = torch.arange(num_frames)
    return torch.where(f == 0, 0, 1 + (f - 1) // temporal_factor)


def latent_to_frame_weights(num_frames: int, temporal_factor: int, num_latent: int) -> torch.Tensor:
    """(T, t) weights that interpolate per-latent-frame values to video frames, linearly in time.

    Latent frame 0 holds frame 0; latent frame k >= 1 holds frames tf*k - tf + 1 .. tf*k and sits at their
    centre, tf*k - (tf - 1) / 2. Frames beyond the first or last centre take that latent frame's value.
    Each row sums to 1; `values (..., t) @ weights.T` gives (..., T)."""
    centres = np.array([0.0] + [temporal_factor * k - (temporal_factor - 1) / 2 for k in range(1, num_latent)])
    frames = np.arange(num_frames, dtype=np.float64)
    columns = [np.interp(frames, centres, one_hot) for one_hot in np.eye(num_latent)]  # t x (T,)
    return torch.from_numpy(np.stack(columns, axis=1)).float()
