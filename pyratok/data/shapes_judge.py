"""Prompt-faithfulness check for Shapes videos, by pixels alone, and the prompt parsers it is scored against.

Implements the "Prompt-faithfulness check" and "Two-object check" sections of /work/shared/SHAPES.md.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from pyratok.data.shapes import COLOURS, MOTIONS, SHAPES, SPLITS, check_split
from pyratok.data.shapes_fit import best_shape, complete, fit_costs

OBJECT_THRESHOLD = 100  # a pixel belongs to an object when its max channel exceeds this
FILL_RATIOS = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # object area / bounding-box area
PRESENT_FRACTION = 0.01  # a named colour is present when it covers >= 1% of the middle frame ...
PRESENT_SHARE = 0.25  # ... or of at least this share of the frames (hidden by the other in the middle)
TRACK_FRACTION = 0.0025  # frames where a colour covers >= 0.25% of the frame carry its shape and motion
TOUCH_RADIUS = 2  # px: another colour this close may hide part of an object
_PALETTE = np.array(list(COLOURS.values()), np.float32)  # (K, 3), K palette colours in COLOURS order
_MOTION_WORDS = {
    "left": "left", "right": "right", "up": "up", "upward": "up", "upwards": "up",
    "down": "down", "downward": "down", "downwards": "down",
    "growing": "growing", "grows": "growing", "grow": "growing", "bigger": "growing", "larger": "growing",
    "expanding": "growing", "expands": "growing",
    "shrinking": "shrinking", "shrinks": "shrinking", "shrink": "shrinking", "smaller": "shrinking",
}


def _named(text: str) -> tuple[str | None, str | None, str | None]:
    words = re.findall(r"[a-z]+", text.lower())
    colour = next((w for w in words if w in COLOURS), None)
    shape = next((w for w in words if w in SHAPES), None)
    motion = next((_MOTION_WORDS[w] for w in words if w in _MOTION_WORDS), None)
    return colour, shape, motion


def parse_prompt(text: str) -> tuple[str, str, str]:
    """(colour, shape, motion) named first in a Shapes caption/prompt; ValueError if one is missing."""
    colour, shape, motion = _named(text)
    missing = [name for name, v in (("colour", colour), ("shape", shape), ("motion", motion)) if v is None]
    if missing:
        raise ValueError(f"prompt {text!r} names no {' / '.join(missing)} from the Shapes vocabulary")
    assert motion in MOTIONS
    return colour, shape, motion


def parse_objects(text: str) -> list[tuple[str, str, str | None]]:
    """(colour, shape, motion or None) per object of a caption joined with 'and', as ShapesDataset writes them.

    "a red circle moving left and a blue square growing" -> [("red", "circle", "left"), ("blue", "square",
    "growing")]. Each part must name a colour and a shape; a part naming no motion gets None (not judged).
    """
    objects = []
    for part in re.split(r"\band\b", text.lower()):
        colour, shape, motion = _named(part)
        if colour is None or shape is None:
            raise ValueError(f"{part.strip()!r} in prompt {text!r} names no "
                             f"{'colour' if colour is None else 'shape'} from the Shapes vocabulary")
        objects.append((colour, shape, motion))
    return objects


def caption_in_split(caption: str, split: str = "train") -> bool:
    """Whether every object a Shapes caption names (`parse_objects`) is a colour x shape pair of `split`
    (shapes.SPLITS): a caption the split itself could show; "a yellow triangle" is not in "train"."""
    check_split(split)
    return all((colour, shape) in SPLITS[split] for colour, shape, _ in parse_objects(caption))


def _nearest(value: float | np.ndarray, table: dict) -> str:
    return min(table, key=lambda k: float(np.sum((np.asarray(table[k], np.float64) - value) ** 2)))


def _slope(t: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y over t (0 with fewer than two points)."""
    if len(t) < 2:
        return 0.0
    t = t - t.mean()
    return float(np.sum(t * (y - y.mean())) / max(float(np.sum(t * t)), 1e-12))


def _fill_ratio(mask_hw: np.ndarray) -> float:
    """Object area / bounding-box area of a non-empty (H, W) mask."""
    ys, xs = np.nonzero(mask_hw)
    box_area = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    return float(len(xs) / box_area)


def _nearest_shape(fill: float) -> str:
    return min(FILL_RATIOS, key=lambda k: abs(FILL_RATIOS[k] - fill))


def _motion(mask: np.ndarray, seen: np.ndarray) -> str:
    """Centroid track vs area trend of mask (T, H, W) over frames `seen` (sorted indices with pixels).

    Displacement over the clip in object widths against relative area change, whichever is larger.
    """
    area = mask.sum(axis=(1, 2)).astype(np.float64)  # (T,)
    t_idx, h_idx, w_idx = np.nonzero(mask)
    cx = np.bincount(t_idx, weights=w_idx, minlength=len(mask))[seen] / area[seen]
    cy = np.bincount(t_idx, weights=h_idx, minlength=len(mask))[seen] / area[seen]
    span = float(seen[-1] - seen[0])
    dx, dy = _slope(seen.astype(float), cx) * span, _slope(seen.astype(float), cy) * span
    shift = max(abs(dx), abs(dy)) / np.sqrt(area[seen].mean())  # displacement in object widths
    growth = _slope(seen.astype(float), area[seen]) * span / area[seen].mean()  # relative area change
    if abs(growth) > shift:
        return "growing" if growth > 0 else "shrinking"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


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
    seen = np.flatnonzero(obj.any(axis=(1, 2)))
    if len(seen) == 0:
        return {"colour": None, "shape": None, "motion": None, "fill_ratio": None, "found": False}
    mean_rgb = frames[obj].astype(np.float64).mean(axis=0)  # (3,)
    mid = int(seen[np.argmin(np.abs(seen - (len(frames) - 1) / 2))])  # middle frame (or nearest with pixels)
    fill = _fill_ratio(obj[mid])
    return {"colour": _nearest(mean_rgb, COLOURS), "shape": _nearest_shape(fill), "motion": _motion(obj, seen),
            "fill_ratio": fill, "mean_rgb": tuple(float(v) for v in mean_rgb), "found": True}


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape) == 0 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be non-empty uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames


def _check_colours(colours: Sequence[str]) -> None:
    if isinstance(colours, str) or len(colours) == 0:
        raise ValueError(f"colours must be a non-empty list of palette names, got {colours!r}")
    for colour in colours:
        if colour not in COLOURS:
            raise ValueError(f"unknown colour {colour!r}; expected one of {list(COLOURS)}")
    repeated = next((c for c in colours if list(colours).count(c) > 1), None)
    if repeated is not None:
        raise ValueError(f"colour {repeated!r} is named twice: two objects of one colour cannot be told apart "
                         f"by colour segmentation")


def _check_objects(objects: Sequence[tuple[str, str, str | None]]) -> None:
    if isinstance(objects, str) or len(objects) == 0:
        raise ValueError(f"objects must be a non-empty list of (colour, shape, motion or None), got {objects!r}")
    for item in objects:
        if isinstance(item, str) or len(item) != 3:
            raise ValueError(f"each object must be (colour, shape, motion or None), got {item!r}")
        _, shape, motion = item
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")
        if motion is not None and motion not in MOTIONS:
            raise ValueError(f"unknown motion {motion!r}; expected one of {list(MOTIONS)} or None")
    _check_colours([item[0] for item in objects])


def palette_labels(frames: np.ndarray) -> np.ndarray:
    """Nearest palette colour per object pixel: int (T, H, W), index into COLOURS, -1 for background.

    Object pixels have max channel > 100. Each palette colour c stands for its blends a*c (a in [0, 1])
    with the black background, so anti-aliased edges keep their colour (dark yellow is yellow, not green).
    """
    frames = _check_frames(frames)
    obj = frames.max(axis=-1) > OBJECT_THRESHOLD  # (T, H, W)
    rgb = frames[obj].astype(np.float32)  # (N, 3) object pixels
    dot = rgb @ _PALETTE.T  # (N, K)
    norm2 = np.sum(_PALETTE**2, axis=-1)  # (K,)
    a = np.clip(dot / norm2, 0.0, 1.0)  # (N, K) the blend of each palette colour nearest the pixel
    dist2 = np.sum(rgb**2, axis=-1, keepdims=True) - 2 * a * dot + a * a * norm2  # (N, K)
    labels = np.full(obj.shape, -1, np.int64)  # (T, H, W)
    labels[obj] = np.argmin(dist2, axis=-1)
    return labels


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation of a bool (T, H, W) mask by `radius` pixels in H and W."""
    out = mask.copy()
    h, w = mask.shape[1:]
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] |= \
                mask[:, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    return out


def _judge_mask(mask: np.ndarray, others: np.ndarray, mid: int) -> dict:
    """Single-object rules on one colour's mask (T, H, W), where `others` (T, H, W) may hide part of it."""
    _, height, width = mask.shape  # (T, H, W)
    area = mask.sum(axis=(1, 2))  # (T,)
    big = area >= PRESENT_FRACTION * height * width  # (T,)
    verdict = {"present": bool(big[mid] or big.mean() >= PRESENT_SHARE),
               "area_fraction": float(area[mid] / (height * width)),
               "shape": None, "fill_ratio": None, "motion": None, "frames": [], "touching": []}
    tracked = np.flatnonzero(area >= TRACK_FRACTION * height * width)  # frames that carry the object
    if len(tracked) == 0:
        return verdict
    touching = tracked[(_dilate(mask[tracked], TOUCH_RADIUS) & others[tracked]).any(axis=(1, 2))]
    clear = np.setdiff1d(tracked, touching)
    under = _dilate(others[touching], 1)  # (n, H, W) where the other object may hide this one
    if len(clear):  # the single-object rule on the clear frame nearest the middle
        fill = _fill_ratio(mask[clear[np.argmin(np.abs(clear - mid))]])
        shape = _nearest_shape(fill)
    else:  # touching throughout: the template that best explains its largest view, parts maybe hidden
        k = int(np.argmax(area[touching]))
        fill, shape = None, best_shape(fit_costs(mask[touching[k]], under[k]))
    amodal = mask.copy()
    for k, t in enumerate(touching):
        amodal[t] = complete(mask[t], under[k], shape)
    verdict.update(shape=shape, fill_ratio=fill, motion=_motion(amodal, tracked),
                   frames=[int(t) for t in tracked], touching=[int(t) for t in touching])
    return verdict


def judge_objects(frames: np.ndarray, colours: Sequence[str]) -> dict[str, dict]:
    """Judge each named colour of a uint8 (T, H, W, 3) clip as one object ("Two-object check", SHAPES.md).

    Every object pixel (max channel > 100) goes to its nearest palette colour (`palette_labels`); a named
    colour's pixels are that object's mask. Per colour, a dict:
    - present: the mask covers >= 1% of the middle frame, or of at least a quarter of the frames (the
      other object may hide it in the middle);
    - frames: the frames where it covers >= 0.25% of the frame (the object's track); touching: those of
      them where another named colour lies within 2 px (it may hide part of this object);
    - shape, fill_ratio: the single-object fill-ratio rule on the track frame nearest the middle that
      touches nothing; if every frame touches, the template (`shapes_fit`) that best explains its largest
      view where the other object may hide part of it (fill_ratio None);
    - motion: the single-object rule (centroid track vs area trend) over the track, where touching frames
      use the mask completed by its best template under the other object;
    - area_fraction: share of the middle frame it covers.
    shape / motion are None when no frame carries the object. Colours must be distinct palette names:
    two objects of one colour cannot be told apart by colour.
    """
    _check_colours(colours)
    labels = palette_labels(frames)  # (T, H, W)
    mid = (len(labels) - 1) // 2
    masks = {c: labels == list(COLOURS).index(c) for c in colours}  # (T, H, W) each
    nothing = np.zeros(labels.shape, bool)
    return {c: _judge_mask(masks[c], np.any([nothing, *(m for o, m in masks.items() if o != c)], axis=0), mid)
            for c in colours}


def score_verdicts(verdicts: dict[str, dict], objects: Sequence[tuple[str, str, str | None]]) -> dict:
    """Compare `judge_objects` verdicts with named objects [(colour, shape, motion or None), ...].

    Per object (in "objects"): its verdict ("judged"), colour_ok (its colour is present), shape_ok (present
    with that shape), motion_ok (present with that motion; None where no motion is named).
    all_right: every object present with the right shape and, where named, motion (SHAPES.md "Both
    objects are right"); colour_shape_right: every object present with the right shape.
    """
    _check_objects(objects)
    missing = [colour for colour, _, _ in objects if colour not in verdicts]
    if missing:
        raise ValueError(f"no verdict for colour {missing[0]!r}; judged {list(verdicts)}")
    rows = []
    for colour, shape, motion in objects:
        v = verdicts[colour]
        rows.append({"colour": colour, "shape": shape, "motion": motion, "judged": v, "colour_ok": v["present"],
                     "shape_ok": v["present"] and v["shape"] == shape,
                     "motion_ok": None if motion is None else v["present"] and v["motion"] == motion})
    colour_shape = all(r["shape_ok"] for r in rows)
    return {"objects": rows, "colour_shape_right": colour_shape,
            "all_right": colour_shape and all(r["motion_ok"] is not False for r in rows)}


def score_objects(frames: np.ndarray, objects: Sequence[tuple[str, str, str | None]]) -> dict:
    """Judge a uint8 (T, H, W, 3) clip against named objects [(colour, shape, motion or None), ...]."""
    _check_objects(objects)
    return score_verdicts(judge_objects(frames, [colour for colour, _, _ in objects]), objects)


def score_caption(frames: np.ndarray, caption: str) -> dict:
    """`score_objects` for the objects a caption names ("a red circle moving left and a blue square growing")."""
    return score_objects(frames, parse_objects(caption))
