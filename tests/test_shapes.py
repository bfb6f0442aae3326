"""Tests for the Shapes set and its judge: determinism, splits, labels, captions, prompt-faithfulness.

Covers pyratok/data/shapes.py and shapes_judge.py against /work/shared/SHAPES.md.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pyratok.data.shapes import (COLOURS, HELDOUT_PAIRS, MOTIONS, SHAPES, ShapesDataset, caption_for,
                                 video_to_uint8)
from pyratok.data.shapes_judge import caption_in_split, judge_video, parse_prompt


def _centroids(masks: torch.Tensor) -> np.ndarray:
    """(T, H, W) bool -> (T, 2) mask centroid (x, y)."""
    t, y, x = np.nonzero(masks.numpy())
    count = np.bincount(t, minlength=len(masks))
    return np.stack([np.bincount(t, x, len(masks)) / count, np.bincount(t, y, len(masks)) / count], -1)


def test_item_format_and_determinism():
    ds = ShapesDataset(length=10, seed=3)
    a, b = ds[7], ShapesDataset(length=10, seed=3)[7]
    assert a["video"].shape == (3, 17, 64, 64) and a["video"].dtype == torch.float32
    assert -1.0 <= a["video"].min() and a["video"].max() <= 1.0
    assert a["masks"].shape == (17, 64, 64) and a["masks"].dtype == torch.bool
    assert a["boxes"].shape == (17, 4) and a["presence"].shape == (1, 17)
    assert torch.equal(a["video"], b["video"]) and a["caption"] == b["caption"]
    assert not torch.equal(a["video"], ShapesDataset(length=10, seed=4)[7]["video"])
    assert not torch.equal(a["video"], ds[6]["video"])
    small = ShapesDataset(length=2, num_frames=9, height=32, width=48, fps=4)[1]
    assert small["video"].shape == (3, 9, 32, 48) and small["fps"] == 4


def test_splits_hold_out_pairs():
    assert len(HELDOUT_PAIRS) == 4 and len(COLOURS) * len(SHAPES) == 24
    for objects in (1, 2):
        train = ShapesDataset("train", length=300, num_objects=objects)
        held = ShapesDataset("heldout", length=40, num_objects=objects)
        train_pairs = {(o.colour, o.shape) for i in range(len(train)) for o in train.plan(i)[0]}
        held_pairs = {(o.colour, o.shape) for i in range(len(held)) for o in held.plan(i)[0]}
        assert not train_pairs & set(HELDOUT_PAIRS)
        assert held_pairs <= set(HELDOUT_PAIRS)
    assert len(train_pairs) == 20 and held_pairs == set(HELDOUT_PAIRS)
    assert [(o["colour"], o["shape"]) for o in held[0]["objects"]] == [(o.colour, o.shape) for o in held.plan(0)[0]]


@pytest.mark.parametrize("motion", MOTIONS)
def test_motion_labels_match_pixels(motion):
    ds = ShapesDataset(length=1)
    for colour, shape in [("red", "circle"), ("blue", "square"), ("green", "triangle")]:
        s = ds.render(colour, shape, motion, seed=1)
        masks, boxes = s["masks"], s["boxes"].numpy()
        (x0, y0), (x1, y1) = _centroids(masks)[[0, -1]]
        area = masks.sum((1, 2)).float()
        expected = {"left": x1 < x0 - 20, "right": x1 > x0 + 20, "up": y1 < y0 - 20, "down": y1 > y0 + 20,
                    "growing": area[-1] > 2.2 * area[0], "shrinking": area[-1] < area[0] / 2.2}
        assert expected[motion], (colour, shape, motion)
        half = (boxes[:, 2] - boxes[:, 0]) / 2
        assert 7 <= half[0] <= 12 if motion != "shrinking" else 7 / 1.6 <= half[-1] <= 12 / 1.6
        assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= 64 and boxes[:, [1, 3]].max() <= 64
        if motion in ("left", "right", "up", "down"):
            speed = np.abs(np.diff(boxes[:, 0] + boxes[:, 1]))
            assert np.all((speed > 1.49) & (speed < 2.51))
        t, y, x = np.nonzero(masks.numpy())  # every mask pixel lies inside its frame's box
        assert np.all((x + 0.5 >= boxes[t, 0]) & (x + 0.5 <= boxes[t, 2]))
        assert np.all((y + 0.5 >= boxes[t, 1]) & (y + 0.5 <= boxes[t, 3]))
        frames = video_to_uint8(s["video"])
        colours, counts = np.unique(frames[masks.numpy()], axis=0, return_counts=True)
        assert tuple(colours[counts.argmax()]) == COLOURS[colour]  # the flat fill is the palette colour


def test_textured_background_is_dim():
    ds = ShapesDataset(length=6, textured_prob=1.0, antialias=False)
    for i in range(len(ds)):
        s = ds[i]
        frames = video_to_uint8(s["video"])
        assert frames[~s["masks"].numpy()].max() <= 60
        assert frames[~s["masks"].numpy()].max() > 0
        assert "textured" in s["caption"] or "background" not in s["caption"]


def test_multi_object_presence_consistent_with_masks():
    ds = ShapesDataset(length=24, num_objects=2)
    partial = 0
    for i in range(len(ds)):
        s = ds[i]
        assert s["presence"].shape == (2, 17) and s["object_masks"].shape == (2, 17, 64, 64)
        assert torch.equal(s["presence"], s["object_masks"].any(dim=(2, 3)))
        assert torch.equal(s["masks"], s["object_masks"].any(0))
        assert torch.isnan(s["object_boxes"][~s["presence"]]).all()
        assert not torch.isnan(s["object_boxes"][s["presence"]]).any()
        colours = [o["colour"] for o in s["objects"]]
        assert colours[0] != colours[1] and all(c in s["caption"] for c in colours)
        for o, p in zip(s["objects"], s["presence"]):
            assert p.nonzero().min() == o["enter"] and p.nonzero().max() == o["leave"] - 1
        partial += int(not s["presence"].all())
    assert partial >= 4  # objects do enter late / leave early


@pytest.mark.parametrize("size", [64, 128])
def test_two_objects_kept_apart_never_touch(size):
    """min_gap: the two objects' masks keep min_gap px apart in every frame (placed independently, they overlap);
    the objects' colours, shapes, motions and timing are those drawn without it."""
    free = ShapesDataset(length=40, num_objects=2, height=size, width=size, seed=3)
    apart = ShapesDataset(length=40, num_objects=2, height=size, width=size, seed=3, min_gap=4)

    def kept_apart(sample, px: int) -> bool:  # no pixel of one object within px pixels (x or y) of the other's
        first, second = sample["object_masks"].float()  # (T, H, W) each
        near = torch.nn.functional.max_pool2d(first[:, None], 2 * px + 1, stride=1, padding=px)[:, 0]  # dilated
        return not bool((near * second).any())

    overlaps = sum(not kept_apart(free[i], 0) for i in range(len(free)))
    assert overlaps >= 10, overlaps  # without min_gap, many pairs overlap
    for i in range(len(apart)):
        a, b = apart[i], free[i]
        assert kept_apart(a, 4)
        keep = [(o["colour"], o["shape"], o["motion"], o["enter"], o["leave"]) for o in a["objects"]]
        assert keep == [(o["colour"], o["shape"], o["motion"], o["enter"], o["leave"]) for o in b["objects"]]
        assert a["caption"] == b["caption"]
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="min_gap"):
            ShapesDataset(num_objects=2, min_gap=bad)
    with pytest.raises(ValueError, match="num_objects=1"):
        ShapesDataset(min_gap=4)
    with pytest.raises(ValueError, match="min_gap=60"):
        ShapesDataset(length=1, num_objects=2, min_gap=60)[0]


def test_judge_recovers_labels():
    ds = ShapesDataset(length=48, textured_prob=0.5, seed=11)
    hits = 0
    for i in range(len(ds)):
        s = ds[i]
        verdict = judge_video(video_to_uint8(s["video"]))
        hits += (verdict["colour"], verdict["shape"], verdict["motion"]) == (s["colour"], s["shape"], s["motion"])
        assert parse_prompt(s["caption"]) == (s["colour"], s["shape"], s["motion"])
    assert hits / len(ds) >= 0.95
    empty = judge_video(np.zeros((5, 16, 16, 3), np.uint8))
    assert empty["found"] is False and empty["colour"] is None


def test_every_caption_template_parses():
    for (c, s, m), t in itertools.product(itertools.product(COLOURS, SHAPES, MOTIONS), range(4)):
        text = caption_for(c, s, m, t)
        assert parse_prompt(text) == (c, s, m), text
    assert caption_for("red", "circle", "left") == "a red circle moving left"
    assert caption_for("orange", "square", "growing") == "an orange square growing"
    with pytest.raises(ValueError, match="'a blue thing'"):
        parse_prompt("a blue thing")
    with pytest.raises(ValueError, match="'pink'"):
        ShapesDataset().render("pink", "circle", "left")


def test_caption_in_split_reads_every_object_of_a_caption():
    for (c, s, m), t in itertools.product(itertools.product(COLOURS, SHAPES, MOTIONS), range(4)):
        assert caption_in_split(caption_for(c, s, m, t)) == ((c, s) not in HELDOUT_PAIRS)
        assert caption_in_split(caption_for(c, s, m, t), "heldout") == ((c, s) in HELDOUT_PAIRS)
    assert caption_in_split("a red circle moving left and a blue square growing")
    assert not caption_in_split("a red circle moving left and a yellow triangle growing")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        caption_in_split("a red circle", "test")
