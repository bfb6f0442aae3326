"""Amodal template fit for the Shapes judge: which shape (circle, square, triangle), and where, best explains a
mask that another object may partly hide. Serves the "Two-object check" of SHAPES.md when objects overlap.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from einops import reduce
from numpy.lib.stride_tricks import sliding_window_view

from pyratok.data.shapes import SHAPES, signed_distance

HIDDEN_COST = 0.25  # per template pixel placed under the other object: the least-hidden explanation wins
MAX_SPAN = 24  # fit on f x f blocks, f chosen so that the visible mask spans at most this many blocks
EXTRA = 0.5  # a template's box side may exceed the visible mask's longer side by this fraction


def _blocks(mask: np.ndarray, f: int) -> np.ndarray:
    """Mean of f x f blocks of an (H, W) mask, zero-padded to multiples of f: float (ceil(H/f), ceil(W/f))."""
    h, w = mask.shape
    padded = np.zeros((math.ceil(h / f) * f, math.ceil(w / f) * f), np.float32)
    padded[:h, :w] = mask
    return reduce(padded, "(h f1) (w f2) -> h w", "mean", f1=f, f2=f)


@lru_cache(maxsize=256)
def _template(shape: str, side: int) -> np.ndarray:
    """The shape filling a side x side box, sampled at block centres: read-only float32 (side, side) of 0 / 1."""
    half = np.full(1, side / 2, np.float32)
    out = (signed_distance(shape, half, half, half, side, side)[0] >= 0).astype(np.float32)
    out.flags.writeable = False
    return out


def _fit(visible: np.ndarray, hidden: np.ndarray, shape: str) -> tuple[float, float, float, float]:
    """Best `shape` template for bool `visible` (H, W) whose unseen part may lie in `hidden` (H, W).

    Returns (cost in pixels, centre x, centre y, radius in pixels). cost = visible pixels outside the
    template + template pixels on background + HIDDEN_COST x template pixels in `hidden`; pixels beyond
    the frame cost nothing. All three shapes fill a square 2r x 2r box, so the candidates are the square
    boxes containing the visible mask's box, side up to (1 + EXTRA) x its longer side, searched on f x f
    blocks with f such that the visible mask spans at most MAX_SPAN blocks.
    """
    ys, xs = np.nonzero(visible)
    span = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
    f = max(1, math.ceil(span / MAX_SPAN))
    margin = int((1 + EXTRA) * span) + 4 * f  # pixels: every candidate box lies this close to the mask's box
    top, left = max(int(ys.min()) - margin, 0), max(int(xs.min()) - margin, 0)
    window = np.s_[top : int(ys.max()) + margin + 1, left : int(xs.max()) + margin + 1]
    visible, hidden = visible[window], hidden[window]  # (h, w) pixels around the mask
    vis = _blocks(visible, f) >= 0.5  # (h / f, w / f) in blocks
    if not vis.any():
        vis = _blocks(visible, f) > 0
    hid = (_blocks(hidden & ~visible, f) > 0) & ~vis
    ys, xs = np.nonzero(vis)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    longest = max(x1 - x0, y1 - y0) + 1
    reach = int((1 + EXTRA) * longest)  # largest side tried, in blocks
    # cost of a template = visible count + sum of these weights over its blocks; 0 beyond the frame
    weight = np.pad(np.where(vis, -1.0, np.where(hid, HIDDEN_COST, 1.0)).astype(np.float32), reach)
    best = (np.inf, 0.0, 0.0, 0.0)
    for side in range(longest, reach + 1):
        # boxes with top-left corner (x, y), x in [x1 + 1 - side, x0], y in [y1 + 1 - side, y0]
        region = weight[y1 + 1 - side + reach : y0 + side + reach, x1 + 1 - side + reach : x0 + side + reach]
        windows = sliding_window_view(region, (side, side))  # (n_y, n_x, side, side)
        cost = np.einsum("yxij,ij->yx", windows, _template(shape, side))  # (n_y, n_x)
        iy, ix = np.unravel_index(int(np.argmin(cost)), cost.shape)
        total = (float(cost[iy, ix]) + float(vis.sum())) * f * f
        if total < best[0]:
            best = (total, left + (x1 + 1 - side + ix + side / 2) * f, top + (y1 + 1 - side + iy + side / 2) * f,
                    side / 2 * f)
    return best


def _check(visible: np.ndarray, hidden: np.ndarray) -> None:
    if visible.shape != hidden.shape or visible.ndim != 2:
        raise ValueError(f"visible and hidden must be (H, W) masks of one shape, got {visible.shape}, {hidden.shape}")
    if not visible.any():
        raise ValueError("visible mask is empty: nothing to fit")


def fit_costs(visible: np.ndarray, hidden: np.ndarray) -> dict[str, float]:
    """Least cost (pixels) per shape of explaining bool `visible` (H, W), its unseen part in `hidden` (H, W)."""
    _check(visible, hidden)
    return {shape: _fit(visible, hidden, shape)[0] for shape in SHAPES}


def complete(visible: np.ndarray, hidden: np.ndarray, shape: str) -> np.ndarray:
    """Amodal mask (H, W): `visible` plus the pixels of `hidden` that its best `shape` template covers."""
    _check(visible, hidden)
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")
    _, cx, cy, r = _fit(visible, hidden, shape)
    cx_t, cy_t, r_t = (np.full(1, v, np.float32) for v in (cx, cy, r))  # (T,) with T = 1
    inside = signed_distance(shape, cx_t, cy_t, r_t, *visible.shape)[0] >= 0  # (H, W)
    return visible | (inside & hidden)


def best_shape(costs: dict[str, float]) -> str:
    """The shape of least cost in a `fit_costs` result."""
    return min(costs, key=costs.get)
