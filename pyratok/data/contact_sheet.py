"""Contact sheets: a grid PNG of a clip's frames (or one row per clip) for quick visual checks.

Supports the demo and evaluation reports (DESIGN.md "Scale story": see results on a CPU in minutes).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


def _as_frames(clip) -> np.ndarray:
    clip = np.asarray(clip)
    if clip.ndim == 3 and clip.shape[-1] == 3:
        clip = clip[None]  # one image (H, W, 3) -> (1, H, W, 3)
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {clip.dtype} {clip.shape}")
    return clip


def contact_sheet(frames: np.ndarray | Sequence[np.ndarray], cols: int | None = None, pad: int = 2,
                  scale: int = 1) -> np.ndarray:
    """Tile frames into one uint8 image (rows*H', cols*W', 3).

    One clip (T, H, W, 3): frames left to right, `cols` per row (default min(T, 8)).
    A list of clips (each (T_i, H, W, 3), same H and W): one row per clip, `cols` defaults to max T_i.
    `scale` enlarges each frame by pixel repetition; `pad` pixels of grey separate the tiles.
    """
    if isinstance(frames, (list, tuple)):
        clips = [_as_frames(c) for c in frames]
        if not clips:
            raise ValueError("no clips given")
        cols = cols or max(len(c) for c in clips)
        rows_of_tiles = [list(c[i : i + cols]) for c in clips for i in range(0, len(c), cols)]
    else:
        clip = _as_frames(frames)
        cols = cols or min(len(clip), 8)
        rows_of_tiles = [list(clip[i : i + cols]) for i in range(0, len(clip), cols)]
    if cols <= 0:
        raise ValueError(f"cols must be positive, got {cols!r}")
    h, w = rows_of_tiles[0][0].shape[:2]
    if any(t.shape[:2] != (h, w) for row in rows_of_tiles for t in row):
        raise ValueError("all frames in a contact sheet must share one size")
    th, tw = h * scale + pad, w * scale + pad
    sheet = np.full((len(rows_of_tiles) * th + pad, cols * tw + pad, 3), 64, np.uint8)
    for r, row in enumerate(rows_of_tiles):
        for c, tile in enumerate(row):
            big = tile.repeat(scale, axis=0).repeat(scale, axis=1)  # (H*scale, W*scale, 3)
            sheet[pad + r * th : pad + r * th + h * scale, pad + c * tw : pad + c * tw + w * scale] = big
    return sheet


def save_contact_sheet(frames: np.ndarray | Sequence[np.ndarray], path: str | os.PathLike,
                       cols: int | None = None, pad: int = 2, scale: int = 1) -> Path:
    """Write `contact_sheet(frames, cols, pad, scale)` as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(contact_sheet(frames, cols, pad, scale)).save(path)
    return path

