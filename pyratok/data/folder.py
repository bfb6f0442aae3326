"""A folder of videos with captions (captions.jsonl or .txt sidecars) as a training dataset.

Data layer of the design (DESIGN.md "Data flow"): real users' clips, T = 1 + 4k, never crashing a run.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset

from pyratok.data.shapes import seed_for
from pyratok.data.video_io import VideoMeta, VideoReadError, probe_video, read_video

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".gif")


def check_num_frames(num_frames: int) -> int:
    """The backbone encodes frame 0 then 4 frames at a time, so clips have T = 1 + 4k frames."""
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1 or (num_frames - 1) % 4:
        raise ValueError(f"num_frames must be 1 + 4k (1, 5, 9, 13, 17, ...), got {num_frames!r}")
    return int(num_frames)


def frames_to_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, H, W) in [-1, 1]."""
    video = np.ascontiguousarray(rearrange(frames, "t h w c -> c t h w"), dtype=np.float32)
    return torch.from_numpy(video / np.float32(127.5) - np.float32(1.0))


def _read_captions_jsonl(path: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    """(video path, caption) pairs of `path`, and a message for each line skipped: not a JSON object
    with a string 'file', or a caption that is not a string (null included); no caption at all is ""."""
    entries, skipped = [], []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            file, caption = item["file"], item.get("caption", "")
            if not isinstance(file, str) or not isinstance(caption, str):
                raise TypeError(f"'file' and 'caption' must be strings, got {file!r} and {caption!r}")
            entries.append((path.parent / file, caption))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            skipped.append(f"{path}:{n}: skipped, expected a JSON object with string 'file' and 'caption' ({err})")
            warnings.warn(skipped[-1], stacklevel=3)
    return entries, skipped


def index_folder(root: str | os.PathLike, captions_file: str = "captions.jsonl",
                 default_caption: str = "") -> tuple[list[tuple[Path, str]], list[str]]:
    """(video path, caption) pairs: from `root/captions_file` if present, else videos + `.txt` sidecars;
    and a message for each captions line skipped."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"video folder not found: {root}")
    jsonl = root / captions_file
    if jsonl.is_file():
        return _read_captions_jsonl(jsonl)
    videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
    out = []
    for p in videos:
        sidecar = p.with_suffix(".txt")
        out.append((p, sidecar.read_text().strip() if sidecar.is_file() else default_caption))
    return out, []


def clip_start(path, meta: VideoMeta, num_frames: int, fps: float | None, temporal_crop: str,
               rng: np.random.Generator) -> int:
    """First output frame of a `num_frames` clip at `fps` (None: native): random or centred; VideoReadError
    when the video is too short."""
    step = 1.0 if fps is None else meta.fps / fps  # source frames per output frame
    available = int(np.floor((meta.num_frames - 1) / step + 1e-6)) + 1
    spare = available - num_frames
    if spare < 0:
        raise VideoReadError(f"{path}: too short, {available} frame(s) at {fps or meta.fps:g} fps but "
                             f"{num_frames} needed")
    return int(rng.integers(spare + 1)) if temporal_crop == "random" else spare // 2


class VideoTextDataset(Dataset):
    """Clips of `num_frames` (1 + 4k) at `fps` (None: native) and `size`, with their captions.

    temporal_crop: "random" (a start drawn from a generator seeded by (seed, index, epoch); call
    `set_epoch` between epochs) or "centre". Unreadable or too-short files are skipped with a warning
    naming the file, counted in `num_skipped` (per process: each DataLoader worker keeps its own count),
    and the next good file is returned instead; bad captions lines (not JSON, a null caption) are skipped
    with a warning, listed in `skipped_captions`. Items: video (3, T, H, W) in [-1, 1], caption, path.
    """

    def __init__(self, root: str | os.PathLike, num_frames: int = 17, size: int | tuple[int, int] = 64,
                 fps: float | None = None, temporal_crop: str = "random", seed: int = 0,
                 captions_file: str = "captions.jsonl", default_caption: str = ""):
        if temporal_crop not in ("random", "centre", "center"):
            raise ValueError(f"temporal_crop must be 'random' or 'centre', got {temporal_crop!r}")
        self.root = Path(root)
        self.num_frames = check_num_frames(num_frames)
        self.size, self.fps, self.seed = size, fps, seed
        self.temporal_crop = "centre" if temporal_crop == "center" else temporal_crop
        self.entries, self.skipped_captions = index_folder(root, captions_file, default_caption)
        if not self.entries:
            raise ValueError(f"no videos found in {self.root} (looked for {captions_file} or {VIDEO_EXTENSIONS})")
        self.epoch = 0
        self._bad: dict[int, str] = {}  # index -> reason, for files that failed to load
        self._meta: dict[int, VideoMeta] = {}  # index -> probed metadata

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def num_skipped(self) -> int:
        """How many distinct files were skipped as unreadable so far (in this process)."""
        return len(self._bad)

    def _start(self, index: int, rng: np.random.Generator) -> int:
        path = self.entries[index][0]
        if index not in self._meta:  # probing may decode (mkv/webm lack a frame count): once per file
            self._meta[index] = probe_video(path)
        return clip_start(path, self._meta[index], self.num_frames, self.fps, self.temporal_crop, rng)

    def load(self, index: int) -> dict:
        """Load entry `index` or raise `VideoReadError` (no skipping)."""
        path, caption = self.entries[index]
        rng = seed_for("folder", self.seed, index, self.epoch)
        start = self._start(index, rng)
        frames, _ = read_video(path, num_frames=self.num_frames, fps=self.fps, size=self.size, start=start)
        return {"video": frames_to_video(frames), "caption": caption, "path": str(path)}

    def __getitem__(self, index: int) -> dict:
        n = len(self.entries)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a folder of {n} videos")
        for k in range(n):
            j = (index + k) % n
            if j in self._bad:
                continue
            try:
                return self.load(j)
            except VideoReadError as err:
                self._bad[j] = str(err)
                warnings.warn(f"skipping unreadable video {self.entries[j][0]}: {err}", stacklevel=2)
        first = next(iter(self._bad.values()))
        raise RuntimeError(f"all {n} videos in {self.root} are unreadable (first problem: {first})")
