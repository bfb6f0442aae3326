"""Thresholds for score curves and heatmaps: Otsu's method, the min–max midpoint, or a fixed value.

Turns PyraTok's token–text similarities (§5 zero-shot localisation and segmentation) into yes/no decisions
without per-dataset tuning: the adaptive rules need no labels.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

THRESHOLD_RULES = ("otsu", "midpoint")


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


def midpoint_threshold(x) -> float:
    v = _values(x)
    return float((v.min() + v.max()) / 2)


def resolve_threshold(x, threshold: float | str | None) -> float:
    """None or "otsu" -> `otsu_threshold(x)`; "midpoint" -> `midpoint_threshold(x)`; a number -> itself."""
    if threshold is None or threshold == "otsu":
        return otsu_threshold(x)
    if threshold == "midpoint":
        return midpoint_threshold(x)
    if isinstance(threshold, str):
        raise ValueError(f"threshold must be a number or one of {THRESHOLD_RULES}, got {threshold!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number or one of {THRESHOLD_RULES}, got {threshold!r}")
    return float(threshold)
