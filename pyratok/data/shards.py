"""WebDataset tar shards of captioned videos: packing a folder into shards, and reading them back as clips.

The data-at-scale side of DESIGN.md "Scale story": the `webdataset` package writes the shards and streams
them (split across nodes and DataLoader workers); its indexed reader `wids` reads them at random for training
mixtures. Each sample is `{key}.mp4` (the original file's bytes, any format PyAV reads) + `{key}.txt` (its
caption); `shards.json` beside the shards is a wids descriptor (shard files and sample counts).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import webdataset as wds
import wids
from torch.utils.data import Dataset, IterableDataset

from pyratok.data.folder import VideoTextDataset, check_num_frames, clip_start, frames_to_video
from pyratok.data.shapes import seed_for
from pyratok.data.video_io import VideoReadError, probe_video, read_video

SHARD_INDEX = "shards.json"
PATTERN = "shard-%06d.tar"


def pack_folder(root: str | os.PathLike, out_dir: str | os.PathLike, samples_per_shard: int = 1000) -> dict:
    """Write `root`'s captioned videos (captions.jsonl or .txt sidecars) as tar shards in `out_dir`, in order.

    The shards are written in a hidden temporary folder and moved into place when complete, then
    `shards.json` (a wids descriptor: {"shardlist": [{"url", "nsamples"}], "num_samples", ...}). Returns it.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    entries = VideoTextDataset(root, num_frames=1).entries  # (path, caption) pairs, as training reads them
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / SHARD_INDEX).exists():
        raise ValueError(f"{out_dir} already holds shards ({SHARD_INDEX}); choose an empty folder")
    tmp = Path(tempfile.mkdtemp(prefix=".shards-", dir=out_dir))
    try:
        with wds.ShardWriter(str(tmp / PATTERN), maxcount=samples_per_shard, verbose=0) as sink:
            for i, (path, caption) in enumerate(entries):
                suffix = path.suffix.lower().lstrip(".") or "mp4"
                sink.write({"__key__": f"{i:09d}", suffix: path.read_bytes(), "txt": caption})
        files = sorted(p.name for p in tmp.glob("shard-*.tar"))
        counts = [min(samples_per_shard, len(entries) - k * samples_per_shard) for k in range(len(files))]
        for name in files:
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": out_dir.name,
             "shardlist": [{"url": f, "nsamples": n} for f, n in zip(files, counts)], "num_samples": len(entries)}
    part = out_dir / f".{SHARD_INDEX}.{os.getpid()}.tmp"
    part.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(part, out_dir / SHARD_INDEX)
    return index


def shard_files(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """(path, sample count) of every shard listed in `folder/shards.json`, in order."""
    folder = Path(folder)
    path = folder / SHARD_INDEX
    if not path.is_file():
        raise FileNotFoundError(f"no {SHARD_INDEX} in {folder}: pack a folder with `pyratok shard` first")
    return [(str(folder / s["url"]), int(s["nsamples"])) for s in json.loads(path.read_text())["shardlist"]]


def decode_sample(sample: dict, num_frames: int, size, fps: float | None, temporal_crop: str, seed: int,
                  epoch: int = 0) -> dict:
    """One shard sample ({__key__, <video ext>: bytes or a file, txt: ...}; webdataset's field names, or wids'
    with a leading dot) -> {video (3, T, H, W) in [-1, 1], caption, key}; random crops from (seed, key, epoch)."""
    key = sample["__key__"]
    fields = {k.lstrip("."): v for k, v in sample.items() if not k.startswith("__")}
    fields = {k: v.read() if hasattr(v, "read") else v for k, v in fields.items()}
    video_ext = next((k for k in fields if k != "txt"), None)
    if video_ext is None:
        raise VideoReadError(f"shard sample {key} holds no video (fields {sorted(sample)})")
    with tempfile.TemporaryDirectory() as folder:  # PyAV reads the same bytes as the file they came from
        path = Path(folder) / f"{key}.{video_ext}"
        path.write_bytes(fields[video_ext])
        rng = seed_for("shards", seed, zlib.crc32(key.encode()), epoch)
        start = clip_start(key, probe_video(path), num_frames, fps, temporal_crop, rng)
        frames, _ = read_video(path, num_frames=num_frames, fps=fps, size=size, start=start)
    caption = fields.get("txt", b"")
    caption = caption.decode() if isinstance(caption, bytes) else str(caption)
    return {"video": frames_to_video(frames), "caption": caption, "key": key}


class ShardClipDataset(Dataset):
    """Random access to the clips of a `pyratok shard` folder (wids' indexed reader), for training mixtures.

    Items as `ShardVideoDataset`'s; temporal_crop "random" draws from (seed, key, epoch). An unreadable sample
    raises `VideoReadError`.
    """

    def __init__(self, folder: str | os.PathLike, num_frames: int = 17, size: int | tuple[int, int] = 64,
                 fps: float | None = None, temporal_crop: str = "random", seed: int = 0):
        if temporal_crop not in ("random", "centre"):
            raise ValueError(f"temporal_crop must be 'random' or 'centre', got {temporal_crop!r}")
        descriptor = Path(folder) / SHARD_INDEX
        if not descriptor.is_file():
            raise FileNotFoundError(f"no {SHARD_INDEX} in {folder}: pack a folder with `pyratok shard` first")
        # local shards are read in place (wids would copy them into its download cache otherwise)
        self.shards = wids.ShardListDataset(str(descriptor.resolve()), transformations=[], localname=_in_place)
        self.num_frames = check_num_frames(num_frames)
        self.size, self.fps, self.temporal_crop, self.seed, self.epoch = size, fps, temporal_crop, seed, 0

    def __len__(self) -> int:
        return len(self.shards)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} shard samples")
        return decode_sample(self.shards[index], self.num_frames, self.size, self.fps, self.temporal_crop,
                             self.seed, self.epoch)


def _in_place(url: str) -> str:
    return url


class ShardVideoDataset(IterableDataset):
    """Clips from WebDataset shards (paths, URLs or a brace pattern), as `VideoTextDataset` gives them.

    Items: video (3, T, H, W) in [-1, 1], caption, key. Shards are split across processes
    (`split_by_node`) and DataLoader workers; within a shard, order is kept. temporal_crop "random" draws
    the start from (seed, crc32(key), epoch). Unreadable or too-short samples are skipped and counted.
    """

    def __init__(self, urls, num_frames: int = 17, size: int | tuple[int, int] = 64, fps: float | None = None,
                 temporal_crop: str = "centre", seed: int = 0, split_by_node: bool = True):
        if temporal_crop not in ("random", "centre"):
            raise ValueError(f"temporal_crop must be 'random' or 'centre', got {temporal_crop!r}")
        self.urls = urls if isinstance(urls, str) else [str(u) for u in urls]
        self.num_frames = check_num_frames(num_frames)
        self.size, self.fps, self.temporal_crop, self.seed = size, fps, temporal_crop, seed
        self.split_by_node = split_by_node
        self.epoch, self.num_skipped = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def decode(self, sample: dict) -> dict:
        return decode_sample(sample, self.num_frames, self.size, self.fps, self.temporal_crop, self.seed, self.epoch)

    def __iter__(self):
        nodes = wds.split_by_node if self.split_by_node else _every_shard
        for sample in wds.WebDataset(self.urls, shardshuffle=False, nodesplitter=nodes, empty_check=False):
            try:
                yield self.decode(sample)
            except VideoReadError:
                self.num_skipped += 1


def _every_shard(urls):
    """A node splitter that keeps every shard (the caller already chose this process's shards)."""
    yield from urls
