"""Contact sheets: a grid PNG of a clip's frames (or one row per clip), optionally labelled with prompts.

Supports the demo and evaluation reports (DESIGN.md "Scale story": see results on a CPU in minutes).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 14  # pixels of the text strip above a labelled row


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


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def labelled_sheet(sheets: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
    """Stack sheets (each (H_i, W, 3) uint8, one width) top to bottom, each under a strip with its label."""
    if len(sheets) != len(labels):
        raise ValueError(f"got {len(labels)} labels for {len(sheets)} sheets")
    width = max(s.shape[1] for s in sheets)
    font = ImageFont.load_default()
    parts = []
    for sheet, label in zip(sheets, labels):
        strip = Image.new("RGB", (width, LABEL_HEIGHT), (32, 32, 32))
        draw = ImageDraw.Draw(strip)
        draw.text((3, 1), _fit(draw, str(label), font, width - 6), fill=(235, 235, 235), font=font)
        padded = np.full((sheet.shape[0], width, 3), 64, np.uint8)
        padded[:, : sheet.shape[1]] = sheet
        parts += [np.asarray(strip), padded]
    return np.concatenate(parts)


def save_contact_sheet(frames: np.ndarray | Sequence[np.ndarray], path: str | os.PathLike,
                       cols: int | None = None, pad: int = 2, scale: int = 1,
                       labels: str | Sequence[str] | None = None) -> Path:
    """Write `contact_sheet(frames, cols, pad, scale)` as a PNG; returns the path.

    labels: a str (one clip: the title above it, e.g. the prompt) or one str per clip of a list, each
    written above its clip's row(s).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels is None:
        image = contact_sheet(frames, cols, pad, scale)
    elif isinstance(labels, str):
        image = labelled_sheet([contact_sheet(frames, cols, pad, scale)], [labels])
    else:
        cols = cols or max(len(_as_frames(c)) for c in frames)
        image = labelled_sheet([contact_sheet([clip], cols, pad, scale) for clip in frames], labels)
    Image.fromarray(image).save(path)
    return path

