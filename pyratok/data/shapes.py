"""Shapes: a seeded, captioned, procedurally rendered video set with full labels.

Implements /work/shared/SHAPES.md exactly (palette, sizes, motions, captions, held-out pairs, labels).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Sequence

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset

COLOURS = MappingProxyType({
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "yellow": (235, 210, 40),
    "white": (240, 240, 240), "orange": (240, 140, 30), "purple": (150, 60, 200), "cyan": (40, 200, 210),
})
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "growing", "shrinking")
HELDOUT_PAIRS = (("yellow", "triangle"), ("cyan", "square"), ("purple", "circle"), ("white", "triangle"))
TRAIN_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELDOUT_PAIRS)
SPLITS = MappingProxyType({"train": TRAIN_PAIRS, "heldout": HELDOUT_PAIRS})
GROWTH = 1.6  # size factor over the clip for growing / shrinking
SIZE_RANGE = (7.0, 12.0)  # radius / half-side at 64x64
PLACEMENT_TRIES = 1000  # draws of a pair's placement before `min_gap` gives up
SPEED_RANGE = (1.5, 2.5)  # px/frame at 64x64
MAX_BACKGROUND = 60  # textured backgrounds stay at or below this channel value
_DIRECTIONS = MappingProxyType({"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)})
_DIR_PHRASE = MappingProxyType({"left": "to the left", "right": "to the right", "up": "up", "down": "down"})
_SCALE_WORDS = MappingProxyType({"growing": ("growing", "getting bigger"),
                                 "shrinking": ("shrinking", "getting smaller")})
NUM_TEMPLATES = 4


def seed_for(name: str, *ints: int) -> np.random.Generator:
    """Local generator from a stable hash of (name, ints...): never Python's salted hash()."""
    return np.random.default_rng([zlib.crc32(name.encode())] + [int(i) & 0xFFFFFFFFFFFFFFFF for i in ints])


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")


def check_names(colour: str, shape: str, motion: str) -> None:
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {list(COLOURS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion {motion!r}; expected one of {list(MOTIONS)}")


def caption_for(colour: str, shape: str, motion: str, template: int = 0, background: str | None = "black") -> str:
    """Template 0 is the canonical prompt ("a red circle moving left", "an orange square growing")."""
    check_names(colour, shape, motion)
    c, s, t = colour, shape, template % NUM_TEMPLATES
    a = "an" if c[0] in "aeiou" else "a"
    if motion in _DIRECTIONS:
        forms = (f"{a} {c} {s} moving {motion}", f"{a} {c} {s} moves {_DIR_PHRASE[motion]}",
                 f"{c} {s} going {motion}", f"a {s}, {c}, sliding {motion}")
    else:
        word, phrase = _SCALE_WORDS[motion]
        forms = (f"{a} {c} {s} {word}", f"{a} {c} {s} {phrase}", f"{c} {s} {word}", f"a {s}, {c}, {word}")
    text = forms[t]
    return f"{text} on a {background} background" if t == 2 and background else text


@dataclass(frozen=True)
class ObjectSpec:
    """One object: start centre (cx, cy) and radius in canvas pixels, speed in px/frame, frames [enter, leave)."""

    colour: str
    shape: str
    motion: str
    cx: float
    cy: float
    radius: float
    speed: float = 0.0
    enter: int = 0
    leave: int | None = None  # None: until the last frame

    def track(self, num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-frame centre x, centre y and radius, each (T,)."""
        t = np.arange(num_frames, dtype=np.float32)
        frac = t / max(num_frames - 1, 1)
        dx, dy = _DIRECTIONS.get(self.motion, (0, 0))
        cx, cy = self.cx + dx * self.speed * t, self.cy + dy * self.speed * t
        end = {"growing": GROWTH, "shrinking": 1.0 / GROWTH}.get(self.motion, 1.0)
        r = self.radius * (1.0 + (end - 1.0) * frac)
        return cx.astype(np.float32), cy.astype(np.float32), r.astype(np.float32)

    def presence(self, num_frames: int) -> np.ndarray:
        t = np.arange(num_frames)
        return (t >= self.enter) & (t < (num_frames if self.leave is None else self.leave))


def sample_object(rng: np.random.Generator, colour: str, shape: str, motion: str,
                  num_frames: int, height: int, width: int) -> ObjectSpec:
    """Size, speed and start drawn per SHAPES.md, scaled from 64x64, object fully inside every frame."""
    check_names(colour, shape, motion)
    scale = min(height, width) / 64.0
    r = float(rng.uniform(*SIZE_RANGE)) * scale
    steps = max(num_frames - 1, 1)
    if motion in _DIRECTIONS:
        dx, dy = _DIRECTIONS[motion]
        extent = width if dx else height
        speed = float(rng.uniform(*SPEED_RANGE)) * extent / 64.0
        speed = min(speed, max(extent - 2 * r, 0.0) / steps)  # long clips: slow down to stay inside
        travel = speed * (num_frames - 1)
        lo_x, hi_x = r + travel * (dx < 0), width - r - travel * (dx > 0)
        lo_y, hi_y = r + travel * (dy < 0), height - r - travel * (dy > 0)
    else:
        speed, reach = 0.0, r * max(GROWTH, 1.0)  # centre fixed: keep the largest size inside
        lo_x, hi_x, lo_y, hi_y = reach, width - reach, reach, height - reach
    cx = float(rng.uniform(lo_x, max(lo_x, hi_x)))
    cy = float(rng.uniform(lo_y, max(lo_y, hi_y)))
    return ObjectSpec(colour, shape, motion, cx, cy, r, speed)


def gap(a: ObjectSpec, b: ObjectSpec, num_frames: int) -> float:
    """The least gap (px) between two objects' boxes over the clip, in x or in y (negative: the boxes overlap).

    Every shape lies inside its box, centre +- radius. The tracks are taken over every frame, whether or not an
    object is present in it."""
    (ax, ay, ar), (bx, by, br) = a.track(num_frames), b.track(num_frames)
    return float(np.min(np.maximum(np.abs(ax - bx), np.abs(ay - by)) - (ar + br)))


def signed_distance(shape: str, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, height: int, width: int,
                    top: int = 0, left: int = 0) -> np.ndarray:
    """Signed distance (px, > 0 inside) at pixel centres, (T, H, W), from per-frame centre/radius (T,).

    (top, left) offsets the H x W window inside the canvas, so only the object's region is computed.
    """
    xs = np.arange(left, left + width, dtype=np.float32)[None, None, :] + 0.5  # (1, 1, W)
    ys = np.arange(top, top + height, dtype=np.float32)[None, :, None] + 0.5  # (1, H, 1)
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]  # (T, H, W) by broadcasting
    r = r[:, None, None]
    if shape == "circle":
        return r - np.sqrt(dx * dx + dy * dy)
    if shape == "square":
        return r - np.maximum(np.abs(dx), np.abs(dy))
    if shape == "triangle":  # apex (0, -r), base corners (+-r, r): |dx| <= (dy + r) / 2, dy <= r
        return np.minimum(r - dy, (dy + r - 2.0 * np.abs(dx)) / np.sqrt(5.0))
    raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")


def textured_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Dim smooth texture, uint8 (H, W, 3), every channel <= MAX_BACKGROUND."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    freq = rng.uniform(0.5, 4.0, size=(6, 2, 1, 1)) * 2 * np.pi
    phase = rng.uniform(0, 2 * np.pi, size=(6, 1, 1))
    waves = np.sin(freq[:, 0] * xs / width + freq[:, 1] * ys / height + phase)  # (6, H, W)
    mix = rng.normal(size=(3, 6))
    tex = np.einsum("cn,nhw->hwc", mix, waves) + rng.uniform(-0.3, 0.3, size=(height, width, 3))
    tex = (tex - tex.min()) / max(float(np.ptp(tex)), 1e-6)  # (H, W, 3) in [0, 1]
    return np.floor(tex * rng.uniform(20, MAX_BACKGROUND, size=3)).astype(np.uint8)


def render_objects(objects: Sequence[ObjectSpec], num_frames: int, height: int, width: int,
                   background: np.ndarray | None = None, antialias: bool = True) -> dict[str, np.ndarray]:
    """Rasterise objects (later ones on top). Masks are amodal (the object's full shape while present).

    Returns pixels float32 (3, T, H, W) holding whole numbers 0..255 (channels first: the compositing
    loops run along H*W, not along 3), masks bool (N, T, H, W), boxes float32 (N, T, 4) xyxy in pixel
    units (pixel i spans [i, i+1]; NaN while absent), presence bool (N, T). See `pixels_to_frames`.
    """
    canvas = np.zeros((3, num_frames, height, width), np.float32)
    if background is not None:
        canvas += rearrange(background.astype(np.float32), "h w c -> c 1 h w")
    n = len(objects)
    masks = np.zeros((n, num_frames, height, width), bool)
    boxes = np.full((n, num_frames, 4), np.nan, np.float32)
    presence = np.zeros((n, num_frames), bool)
    for i, obj in enumerate(objects):
        cx, cy, r = obj.track(num_frames)
        present = obj.presence(num_frames)
        # window that holds the object in every frame (+1 px for anti-aliased edges): rows y0:y1, cols x0:x1
        y0, x0 = max(int(np.floor((cy - r).min())) - 1, 0), max(int(np.floor((cx - r).min())) - 1, 0)
        y1, x1 = min(int(np.ceil((cy + r).max())) + 1, height), min(int(np.ceil((cx + r).max())) + 1, width)
        if y1 > y0 and x1 > x0:
            sd = signed_distance(obj.shape, cx, cy, r, y1 - y0, x1 - x0, y0, x0)  # (T, y1-y0, x1-x0)
            cover = np.clip(sd + 0.5, 0.0, 1.0) if antialias else (sd >= 0).astype(np.float32)
            cover *= present[:, None, None]
            for c, value in enumerate(COLOURS[obj.colour]):  # over-composite: canvas += cover * (colour - canvas)
                region = canvas[c, :, y0:y1, x0:x1]
                region += cover * (np.float32(value) - region)
            masks[i, :, y0:y1, x0:x1] = (sd >= 0) & present[:, None, None]
        box = np.stack([cx - r, cy - r, cx + r, cy + r], axis=-1)  # (T, 4)
        box = np.clip(box, 0.0, np.array([width, height, width, height], np.float32))
        boxes[i, present] = box[present]
        presence[i] = present
    np.round(canvas, out=canvas)  # convex mixes of 0..255 values: no clipping needed
    return {"pixels": canvas, "masks": masks, "boxes": boxes, "presence": presence}


def pixels_to_frames(pixels: np.ndarray) -> np.ndarray:
    """(3, T, H, W) 0..255 floats -> uint8 frames (T, H, W, 3)."""
    return np.ascontiguousarray(rearrange(pixels, "c t h w -> t h w c")).astype(np.uint8)


def _union_boxes(boxes: np.ndarray) -> np.ndarray:
    """(N, T, 4) with NaN for absent -> (T, 4) box around all present objects (NaN if none)."""
    out = np.full(boxes.shape[1:], np.nan, np.float32)
    any_present = ~np.isnan(boxes[..., 0]).all(0)
    if any_present.any():
        b = boxes[:, any_present]
        out[any_present] = np.concatenate([np.nanmin(b[..., :2], 0), np.nanmax(b[..., 2:], 0)], -1)
    return out


class ShapesDataset(Dataset):
    """Samples are a pure function of (split, index, seed); see SHAPES.md for the rules.

    Each item: video float (3, T, H, W) in [-1, 1], caption, colour/shape/motion (of the first object),
    boxes (T, 4) and masks (T, H, W) over all objects, presence (N, T), object_boxes (N, T, 4),
    object_masks (N, T, H, W), objects (list of per-object dicts), fps, split, index.
    min_gap (two objects): keep their boxes at least min_gap px apart in every frame (`gap`); None: placed
    independently, so they may overlap (the default).
    """

    def __init__(self, split: str = "train", length: int = 1000, num_frames: int = 17, height: int = 64,
                 width: int = 64, fps: int = 8, num_objects: int = 1, textured_prob: float = 0.0,
                 seed: int = 0, antialias: bool = True, min_gap: float | None = None):
        check_split(split)
        if num_objects not in (1, 2):
            raise ValueError(f"num_objects must be 1 or 2, got {num_objects!r}")
        if min_gap is not None and not (np.isfinite(min_gap) and min_gap >= 0 and num_objects > 1):
            raise ValueError(f"min_gap must be None or a finite number of pixels >= 0 with num_objects=2, got "
                             f"{min_gap!r} with num_objects={num_objects}")
        if min(length, num_frames, height, width, fps) <= 0:
            raise ValueError(f"length/num_frames/height/width/fps must be positive, got "
                             f"{(length, num_frames, height, width, fps)}")
        if not 0.0 <= textured_prob <= 1.0:
            raise ValueError(f"textured_prob must be in [0, 1], got {textured_prob!r}")
        self.split, self.length, self.num_frames = split, length, num_frames
        self.height, self.width, self.fps, self.num_objects = height, width, fps, num_objects
        self.textured_prob, self.seed, self.antialias, self.min_gap = textured_prob, seed, antialias, min_gap

    def __len__(self) -> int:
        return self.length

    def _objects(self, rng: np.random.Generator) -> list[ObjectSpec]:
        pairs = SPLITS[self.split]
        first = pairs[rng.integers(len(pairs))]
        others = [pairs[j] for j in rng.permutation(len(pairs)) if pairs[j][0] != first[0]]  # distinct colours
        chosen = [first, *others[: self.num_objects - 1]]
        objects = []
        for colour, shape in chosen:
            obj = sample_object(rng, colour, shape, MOTIONS[rng.integers(len(MOTIONS))],
                                self.num_frames, self.height, self.width)
            if self.num_objects > 1 and self.num_frames >= 4:  # enter late / leave early / stay throughout
                mode, third = rng.integers(3), max(self.num_frames // 3, 1)
                if mode == 1:
                    obj = replace(obj, enter=int(rng.integers(1, third + 1)))
                elif mode == 2:
                    obj = replace(obj, leave=int(self.num_frames - rng.integers(1, third + 1)))
            objects.append(obj)
        return objects

    def _apart(self, rng: np.random.Generator, objects: list[ObjectSpec]) -> list[ObjectSpec]:
        """The objects, their sizes, speeds and starts redrawn from `rng` (motions and timing kept) until `gap` >=
        min_gap."""
        for _ in range(PLACEMENT_TRIES):
            if gap(*objects, self.num_frames) >= self.min_gap:
                return objects
            objects = [replace(sample_object(rng, o.colour, o.shape, o.motion, self.num_frames, self.height,
                                             self.width), enter=o.enter, leave=o.leave) for o in objects]
        raise ValueError(f"min_gap={self.min_gap}: no placement of {[(o.colour, o.shape, o.motion) for o in objects]} "
                         f"keeps the objects {self.min_gap} px apart in {PLACEMENT_TRIES} tries on a "
                         f"{self.height}x{self.width} canvas")

    def plan(self, index: int) -> tuple[list[ObjectSpec], np.ndarray | None, int]:
        """What item `index` shows, without rendering: (objects, background or None, caption template)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for ShapesDataset of length {self.length}")
        rng = seed_for(f"shapes/{self.split}", self.seed, index)
        objects = self._objects(rng)
        textured = bool(rng.random() < self.textured_prob)
        template = int(rng.integers(NUM_TEMPLATES)) if self.num_objects == 1 else (0, 1, 3)[rng.integers(3)]
        background = textured_background(rng, self.height, self.width) if textured else None
        if self.min_gap is not None:  # its own stream: the clip keeps its caption, timing and background
            objects = self._apart(seed_for(f"shapes/{self.split}/apart", self.seed, index), objects)
        return objects, background, template

    def __getitem__(self, index: int) -> dict:
        sample = self.render_spec(*self.plan(index))
        sample.update(split=self.split, index=index)
        return sample

    def render(self, colour: str, shape: str, motion: str, seed: int = 0, textured: bool = False) -> dict:
        """One single-object clip of the given (colour, shape, motion) on this dataset's canvas (any split)."""
        rng = seed_for("shapes/render", seed, zlib.crc32(f"{colour}/{shape}/{motion}".encode()))
        obj = sample_object(rng, colour, shape, motion, self.num_frames, self.height, self.width)
        background = textured_background(rng, self.height, self.width) if textured else None
        return self.render_spec([obj], background, template=0)

    def render_spec(self, objects: Sequence[ObjectSpec], background: np.ndarray | None = None,
                    template: int = 0) -> dict:
        """Render given objects into a sample dict (caption from `template`, joined with 'and')."""
        bg_word = "dark textured" if background is not None else "black"
        out = render_objects(objects, self.num_frames, self.height, self.width, background, self.antialias)
        captions = [caption_for(o.colour, o.shape, o.motion, template, bg_word) for o in objects]
        video = out["pixels"]  # (3, T, H, W) in 0..255, turned into [-1, 1] in place
        video /= np.float32(127.5)
        video -= np.float32(1.0)
        return {
            "video": torch.from_numpy(video),  # (3, T, H, W) in [-1, 1]
            "caption": " and ".join(captions),
            "colour": objects[0].colour, "shape": objects[0].shape, "motion": objects[0].motion,
            "boxes": torch.from_numpy(_union_boxes(out["boxes"])),  # (T, 4)
            "masks": torch.from_numpy(out["masks"].any(0)),  # (T, H, W)
            "presence": torch.from_numpy(out["presence"]),  # (N, T)
            "object_boxes": torch.from_numpy(out["boxes"]),  # (N, T, 4)
            "object_masks": torch.from_numpy(out["masks"]),  # (N, T, H, W)
            "objects": [{"colour": o.colour, "shape": o.shape, "motion": o.motion, "enter": o.enter,
                         "leave": self.num_frames if o.leave is None else o.leave} for o in objects],
            "fps": self.fps,
        }


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) float in [-1, 1] -> uint8 (T, H, W, 3)."""
    v = video.detach().cpu().float().numpy()  # numpy math: cheap and single-threaded for small clips
    frames = np.round((np.clip(v, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return np.ascontiguousarray(rearrange(frames, "c t h w -> t h w c"))
