"""Thresholds for score curves and heatmaps: Otsu's method, a share of the min–max range, or a fixed value.

Turns PyraTok's token–text similarities (§5 zero-shot localisation and segmentation) into yes/no decisions
without per-dataset tuning: the adaptive rules need no labels.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

THRESHOLD_RULES = ("otsu", "midpoint", "low")
# "low": the cut LOW_FRACTION of the way up a curve's range, for things present most of the time. Objects in
# clips are: on calibration clips (multi-object Shapes, seed 9100) the midpoint left out 22% of the frames
# that held the object, "low" 6% (and kept 35% of the frames without it, against 11%). Fractions 0.05-0.25
# score within 0.01 temporal IoU of each other there; 0.15 is their middle.
LOW_FRACTION = 0.15


def _values(x) -> np.ndarray:
    v = np.asarray(x.detach().cpu().float() if isinstance(x, torch.Tensor) else x, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("cannot pick a threshold for an empty set of scores")
    if not np.isfinite(v).all():
        raise ValueError(f"scores must be finite, got {int((~np.isfinite(v)).sum())} NaN/inf value(s)")
    return v


def otsu_threshold(x) -> float:
    """Otsu's split of 1-D values: the cut between two sorted distinct values maximising between-class variance.

    Returns the midpoint of the best cut, so `x >= threshold` is the upper class; all-equal values give that value.
    """
    v = np.sort(_values(x))
    n = v.size
    cut = np.flatnonzero(v[1:] > v[:-1])  # split after index i: class 0 = v[:i+1]
    if cut.size == 0:
        return float(v[0])
    csum = np.cumsum(v)
    n0 = cut + 1.0
    n1 = n - n0
    mean0 = csum[cut] / n0
    mean1 = (csum[-1] - csum[cut]) / n1
    between = n0 * n1 * (mean0 - mean1) ** 2
    i = cut[int(np.argmax(between))]
    return float((v[i] + v[i + 1]) / 2)


def range_threshold(x, fraction: float) -> float:
    """min + fraction * (max - min) of the values: 0.5 is the midpoint, 0 the lowest value."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    v = _values(x)
    return float(v.min() + fraction * (v.max() - v.min()))


def midpoint_threshold(x) -> float:
    return range_threshold(x, 0.5)


def resolve_threshold(x, threshold: float | str | None) -> float:
    """None or "otsu" -> `otsu_threshold(x)`; "midpoint" -> `midpoint_threshold(x)`; "low" ->
    `range_threshold(x, LOW_FRACTION)`; a number -> itself."""
    if threshold is None or threshold == "otsu":
        return otsu_threshold(x)
    if threshold == "midpoint":
        return midpoint_threshold(x)
    if threshold == "low":
        return range_threshold(x, LOW_FRACTION)
    if isinstance(threshold, str):
        raise ValueError(f"threshold must be a number or one of {THRESHOLD_RULES}, got {threshold!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number or one of {THRESHOLD_RULES}, got {threshold!r}")
    return float(threshold)
