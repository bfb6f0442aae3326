"""Prompt-faithfulness check for Shapes videos, by pixels alone, and the prompt parser it is scored against.

Implements the "Prompt-faithfulness check" section of /work/shared/SHAPES.md.
"""
from __future__ import annotations

import re

import numpy as np

from pyratok.data.shapes import COLOURS, MOTIONS, SHAPES

OBJECT_THRESHOLD = 100  # a pixel belongs to the object when its max channel exceeds this
FILL_RATIOS = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # object area / bounding-box area
_MOTION_WORDS = {
    "left": "left", "right": "right", "up": "up", "upward": "up", "upwards": "up",
    "down": "down", "downward": "down", "downwards": "down",
    "growing": "growing", "grows": "growing", "grow": "growing", "bigger": "growing", "larger": "growing",
    "expanding": "growing", "expands": "growing",
    "shrinking": "shrinking", "shrinks": "shrinking", "shrink": "shrinking", "smaller": "shrinking",
}


def parse_prompt(text: str) -> tuple[str, str, str]:
    """(colour, shape, motion) named first in a Shapes caption/prompt; ValueError if one is missing."""
    words = re.findall(r"[a-z]+", text.lower())
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    motion = next((_MOTION_WORDS[w] for w in words if w in _MOTION_WORDS), None)
    missing = [name for name, v in (("colour", colour), ("shape", shape), ("motion", motion)) if v is None]
    if missing:
        raise ValueError(f"prompt {text!r} names no {' / '.join(missing)} from the Shapes vocabulary")
    assert motion in MOTIONS
    return colour, shape, motion


def _nearest(value: float | np.ndarray, table: dict) -> str:
    return min(table, key=lambda k: float(np.sum((np.asarray(table[k], np.float64) - value) ** 2)))


def _slope(t: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y over t (0 with fewer than two points)."""
    if len(t) < 2:
        return 0.0
    t = t - t.mean()
    return float(np.sum(t * (y - y.mean())) / max(float(np.sum(t * t)), 1e-12))


def judge_video(frames: np.ndarray) -> dict:
    """Judge a uint8 (T, H, W, 3) Shapes-like clip: dict(colour, shape, motion), plus evidence.

    colour: mean RGB of object pixels (max channel > 100) -> nearest palette colour.
    motion: centroid track (left/right/up/down) versus area trend (growing/shrinking), whichever
    moves more: displacement over the clip in object widths vs relative area change.
    shape: fill ratio (object area / bounding-box area) on the middle frame -> nearest of
    circle 0.785, square 1.0, triangle 0.5. Values are None when no object pixel is found.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got shape {frames.shape}")
    obj = frames.max(axis=-1) > OBJECT_THRESHOLD  # (T, H, W)
    area = obj.sum(axis=(1, 2)).astype(np.float64)  # (T,)
    seen = np.flatnonzero(area > 0)
    if len(seen) == 0:
        return {"colour": None, "shape": None, "motion": None, "fill_ratio": None, "found": False}
    mean_rgb = frames[obj].astype(np.float64).mean(axis=0)  # (3,)
    colour = _nearest(mean_rgb, COLOURS)

    mid = int(seen[np.argmin(np.abs(seen - (len(frames) - 1) / 2))])  # middle frame (or nearest with pixels)
    ys, xs = np.nonzero(obj[mid])
    box_area = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    fill = float(len(xs) / box_area)
    shape = min(FILL_RATIOS, key=lambda k: abs(FILL_RATIOS[k] - fill))

    _, h_idx, w_idx = np.nonzero(obj)  # centroid per frame from pixel coordinates
    t_idx = np.nonzero(obj)[0]
    cx = np.bincount(t_idx, weights=w_idx, minlength=len(frames))[seen] / area[seen]
    cy = np.bincount(t_idx, weights=h_idx, minlength=len(frames))[seen] / area[seen]
    span = float(seen[-1] - seen[0])
    dx, dy = _slope(seen.astype(float), cx) * span, _slope(seen.astype(float), cy) * span
    shift = max(abs(dx), abs(dy)) / np.sqrt(area[seen].mean())  # displacement in object widths
    growth = _slope(seen.astype(float), area[seen]) * span / area[seen].mean()  # relative area change
    if abs(growth) > shift:
        motion = "growing" if growth > 0 else "shrinking"
    elif abs(dx) >= abs(dy):
        motion = "right" if dx > 0 else "left"
    else:
        motion = "down" if dy > 0 else "up"
    return {"colour": colour, "shape": shape, "motion": motion, "fill_ratio": fill,
            "mean_rgb": tuple(float(v) for v in mean_rgb), "found": True}
