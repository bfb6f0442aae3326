"""Tests for WebDataset shards: `pyratok shard` packs a folder, ShardVideoDataset reads the same clips back,
and a token cache built from the shards equals one built from the folder."""
from __future__ import annotations

import json
import tarfile

import pytest
import torch
from test_build_cache import assert_same, tokenizer_dir  # noqa: F401  (fixture)

from generator.build_cache import main as build_cache
from pipelines.cli import main
from pyratok.data.folder import VideoTextDataset
from pyratok.data.mix import DataConfig, build_dataset
from pyratok.data.shards import ShardClipDataset, ShardVideoDataset, pack_folder, shard_files

SIZE = ["--num-frames", "5", "--size", "16"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    assert main(["shapes", "--n", "5", "--out", str(folder), "--num-frames", "9", "--height", "16",
                 "--width", "16"]) == 0
    return folder


@pytest.fixture(scope="module")
def shards(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    assert main(["shard", str(clips), "--out", str(out), "--samples-per-shard", "2"]) == 0
    return out


def test_shard_command_packs_the_folder_in_order(clips, shards):
    index = json.loads((shards / "shards.json").read_text())
    assert [s["nsamples"] for s in index["shardlist"]] == [2, 2, 1] and index["num_samples"] == 5
    with tarfile.open(shards / index["shardlist"][0]["url"]) as tar:
        assert tar.getnames() == ["000000000.mp4", "000000000.txt", "000000001.mp4", "000000001.txt"]
        first = json.loads((clips / "captions.jsonl").read_text().splitlines()[0])
        assert tar.extractfile("000000000.txt").read().decode() == first["caption"]
        assert tar.extractfile("000000000.mp4").read() == (clips / first["file"]).read_bytes()
    assert not [p for p in shards.iterdir() if p.name.startswith(".")]
    with pytest.raises(ValueError, match="already holds shards"):
        pack_folder(clips, shards)


def test_shards_give_the_folder_clips(clips, shards):
    folder = VideoTextDataset(clips, num_frames=5, size=16, temporal_crop="centre")
    streamed = list(ShardVideoDataset([path for path, _ in shard_files(shards)], num_frames=5, size=16))
    assert len(streamed) == 5 and [s["key"] for s in streamed] == [f"{i:09d}" for i in range(5)]
    for i, item in enumerate(streamed):
        assert item["caption"] == folder[i]["caption"] and torch.equal(item["video"], folder[i]["video"])
    loader = torch.utils.data.DataLoader(ShardVideoDataset(str(shards / "shard-{000000..000002}.tar"), num_frames=5,
                                                           size=16), batch_size=2, num_workers=0)
    assert [tuple(b["video"].shape) for b in loader] == [(2, 3, 5, 16, 16), (2, 3, 5, 16, 16), (1, 3, 5, 16, 16)]


def test_cache_from_shards_equals_cache_from_folder(clips, shards, tokenizer_dir, tmp_path):  # noqa: F811
    common = ["--tokenizer", str(tokenizer_dir), "--batch-size", "2", *SIZE]
    assert build_cache([*common, "--out", str(tmp_path / "folder"), "--folder", str(clips), "--shard-size", "2"]) == 0
    assert build_cache([*common, "--out", str(tmp_path / "shards"), "--shards", str(shards)]) == 0
    assert_same(tmp_path / "shards", tmp_path / "folder")  # one cache shard per tar shard, same tokens


def test_shards_are_a_training_source(clips, shards):
    folder = VideoTextDataset(clips, num_frames=5, size=16, temporal_crop="centre")
    indexed = ShardClipDataset(shards, num_frames=5, size=16, temporal_crop="centre")
    assert len(indexed) == 5
    for i in (4, 0, 2):  # random access, across shards
        assert indexed[i]["caption"] == folder[i]["caption"] and torch.equal(indexed[i]["video"], folder[i]["video"])
    mix = build_dataset(DataConfig(shapes_weight=0.0, shards=str(shards), shards_weight=1.0, num_frames=5, height=16,
                                   width=16, fps=None, length=6))
    items = [mix[i] for i in range(6)]
    assert {item["source"] for item in items} == {"shards"}
    assert all(item["video"].shape == (3, 5, 16, 16) for item in items)
    with pytest.raises(ValueError, match="shards_weight=1.0 but no shards folder is set"):
        build_dataset(DataConfig(shards_weight=1.0))
