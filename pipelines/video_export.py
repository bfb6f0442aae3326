"""`export_to_video`: write a pipeline's frames (PIL list, numpy or torch; uint8 or float) as an mp4.

Output side of the text-to-video pipeline (DESIGN.md "Pipeline"); encoding is pyratok's atomic `write_video`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pyratok.data.video_io import write_video


def frames_to_uint8(frames) -> np.ndarray:
    """One video as uint8 (f, h, w, 3) from a list of PIL images, numpy (f, h, w, 3) or torch
    (f, 3, h, w) / (f, h, w, 3); floats must be in [0, 1] (the pipeline's "np" and "pt" outputs)."""
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError("frames is an empty list")
        if hasattr(frames[0], "convert"):  # PIL images
            frames = np.stack([np.asarray(image.convert("RGB")) for image in frames])  # (f, h, w, 3)
        else:
            frames = np.stack([np.asarray(frame) for frame in frames])
    if hasattr(frames, "detach"):  # torch
        frames = frames.detach().cpu()
        if frames.dim() == 4 and frames.shape[1] == 3 and frames.shape[-1] != 3:
            frames = frames.permute(0, 2, 3, 1)  # (f, 3, h, w) -> (f, h, w, 3)
        frames = frames.float().numpy() if frames.is_floating_point() else frames.numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"one video must be (frames, height, width, 3), got shape {frames.shape}; "
                         "pass frames[k] for video k of a batch")
    if frames.dtype == np.uint8:
        return frames
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {frames.dtype}")
    lo, hi = float(frames.min()), float(frames.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"float frames must be in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
    return np.round(np.clip(frames, 0.0, 1.0) * 255).astype(np.uint8)


def export_to_video(frames, path: str | os.PathLike, fps: float = 8) -> Path:
    """Write one video (see `frames_to_uint8`) to `path` atomically; returns the path."""
    return write_video(frames_to_uint8(frames), path, fps=fps)
