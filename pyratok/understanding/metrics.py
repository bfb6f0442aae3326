"""Scores for zero-shot understanding: recall@k, temporal IoU of segments, IoU of masks.

The measurements behind PyraTok's zero-shot retrieval, temporal localisation and segmentation results (§5);
pure functions of predictions and labels, shared by the benchmark script and the tests.
"""
from __future__ import annotations

import torch

from .localize import Segment


def recall_at_k(ranked: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    """Share of queries whose target is among the first k of its ranked gallery; ranked (q, g), targets (q,)."""
    if ranked.dim() != 2 or targets.shape != ranked.shape[:1]:
        raise ValueError(f"ranked must be (q, g) and targets (q,), "
                         f"got {tuple(ranked.shape)} and {tuple(targets.shape)}")
    if not 1 <= k <= ranked.shape[1]:
        raise ValueError(f"k must be in [1, {ranked.shape[1]}], got {k}")
    hits = (ranked[:, :k] == targets[:, None]).any(1)
    return float(hits.float().mean())


def segments_to_mask(segments: list[Segment], num_frames: int) -> torch.Tensor:
    """(T,) bool, True inside any [start, end) segment."""
    mask = torch.zeros(num_frames, dtype=torch.bool)
    for seg in segments:
        if not 0 <= seg[0] <= seg[1] <= num_frames:
            raise ValueError(f"segment {tuple(seg)} lies outside [0, {num_frames})")
        mask[seg[0] : seg[1]] = True
    return mask


def iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Intersection over union of two same-shape bool masks; two empty masks count as a perfect 1.0."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    pred, target = pred.bool(), target.bool()
    union = int((pred | target).sum())
    return 1.0 if union == 0 else int((pred & target).sum()) / union


def temporal_iou(segments: list[Segment], presence: torch.Tensor) -> float:
    """IoU of the frames covered by predicted segments and the frames where the object is present (T,)."""
    return iou(segments_to_mask(segments, presence.shape[0]), presence)
