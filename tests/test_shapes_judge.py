"""Tests for the two-object Shapes judge: accuracy on ground-truth clips, occlusion, edges, captions, bad input.

Covers pyratok/data/shapes_judge.py ("Two-object check" in /work/shared/SHAPES.md) and shapes_fit.py.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from pyratok.data.shapes import (COLOURS, MOTIONS, ObjectSpec, ShapesDataset, caption_for, pixels_to_frames,
                                 render_objects, video_to_uint8)
from pyratok.data.shapes_fit import complete, fit_costs
from pyratok.data.shapes_judge import (judge_objects, palette_labels, parse_objects, score_caption, score_objects,
                                       score_verdicts)

ATTRIBUTES = ("colour_ok", "shape_ok", "motion_ok")


def _labels(sample: dict) -> list[tuple[str, str, str]]:
    return [(o["colour"], o["shape"], o["motion"]) for o in sample["objects"]]


def _rates(clips: list[tuple[dict, list]]) -> dict[str, float]:
    """Per-object attribute rates and the share of clips with every object right, over (verdicts, objects)."""
    scores = [score_verdicts(verdicts, objects) for verdicts, objects in clips]
    rows = [row for s in scores for row in s["objects"]]
    rates = {a: float(np.mean([bool(r[a]) for r in rows])) for a in ATTRIBUTES}
    rates["all_right"] = float(np.mean([s["all_right"] for s in scores]))
    rates["colour_shape_right"] = float(np.mean([s["colour_shape_right"] for s in scores]))
    return rates


@pytest.mark.parametrize("size,seed", [(64, 2020), (128, 77)])
def test_judge_on_ground_truth_two_object_clips(size, seed):
    """>= 95% of 200 ground-truth clips (17 frames; objects enter late, leave early, overlap) judged all right."""
    ds = ShapesDataset(length=200, num_frames=17, height=size, width=size, num_objects=2, seed=seed)
    samples = (ds[i] for i in range(len(ds)))
    clips = [(judge_objects(video_to_uint8(s["video"]), [o["colour"] for o in s["objects"]]), _labels(s))
             for s in samples]
    rates = _rates(clips)
    print(f"{size}x{size} seed {seed}: {rates}")
    assert rates["all_right"] >= 0.95 and min(rates[a] for a in ATTRIBUTES) >= 0.95, rates
    # the same clips against the wrong shapes (each object's shape moved one along): almost never right
    wrong = [(verdicts, [(c, SHAPES_NEXT[s], m) for c, s, m in objects]) for verdicts, objects in clips]
    assert _rates(wrong)["colour_shape_right"] <= 0.05


SHAPES_NEXT = {"circle": "square", "square": "triangle", "triangle": "circle"}


def _scene(*objects: ObjectSpec, num_frames: int = 9, size: int = 64) -> np.ndarray:
    return pixels_to_frames(render_objects(objects, num_frames, size, size)["pixels"])  # (T, H, W, 3)


def test_square_under_a_circle_in_every_frame():
    """The circle hides a corner of the square throughout: the visible square's fill ratio looks like a circle."""
    square = ObjectSpec("red", "square", "right", cx=22, cy=30, radius=10, speed=1.5)
    circle = ObjectSpec("blue", "circle", "down", cx=34, cy=38, radius=8, speed=0.5)
    frames = _scene(square, circle)
    verdict = judge_objects(frames, ["red", "blue"])
    assert verdict["red"]["touching"] == list(range(9)) and verdict["red"]["fill_ratio"] is None
    assert (verdict["red"]["shape"], verdict["red"]["motion"]) == ("square", "right")
    assert (verdict["blue"]["shape"], verdict["blue"]["motion"]) == ("circle", "down")
    assert score_objects(frames, [("red", "square", "right"), ("blue", "circle", "down")])["all_right"]


def test_object_hidden_in_the_middle_frame_is_present():
    """A small triangle passes under a big square in the middle of the clip: present, right shape and motion."""
    triangle = ObjectSpec("green", "triangle", "right", cx=6, cy=32, radius=6, speed=3.0)
    square = ObjectSpec("white", "square", "up", cx=32, cy=32, radius=10, speed=0.5)
    frames = _scene(triangle, square, num_frames=17)
    verdict = judge_objects(frames, ["green", "white"])["green"]
    assert verdict["area_fraction"] < 0.01  # hidden on the middle frame ...
    assert verdict["present"] and (verdict["shape"], verdict["motion"]) == ("triangle", "right")  # ... judged anyway


def test_anti_aliased_edges_keep_their_colour():
    """Dim blends of a colour with the black background are that colour (dark yellow is nearer green in RGB)."""
    blends = np.array([[[[round(a * v) for v in COLOURS[c]] for c in COLOURS] for a in (1.0, 0.8, 0.6)]], np.uint8)
    labels = palette_labels(blends)  # (1, 3, K): three blend strengths of every palette colour
    assert (labels == np.arange(len(COLOURS))).all()
    assert (palette_labels(np.full((1, 2, 2, 3), 100, np.uint8)) == -1).all()  # max channel 100: background


def test_template_fit_completes_a_hidden_part():
    yy, xx = np.mgrid[0:48, 0:48]
    for shape, full in (("square", (abs(xx - 24) < 10) & (abs(yy - 24) < 10)),
                        ("circle", (xx - 23.5) ** 2 + (yy - 23.5) ** 2 < 100)):
        hidden = xx >= 28  # the right part lies under another object
        visible = full & ~hidden
        costs = fit_costs(visible, hidden)
        assert min(costs, key=costs.get) == shape, costs
        amodal = complete(visible, hidden, shape)
        assert (amodal & full).sum() / (amodal | full).sum() > 0.9
    with pytest.raises(ValueError, match="empty"):
        fit_costs(np.zeros((8, 8), bool), np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match=r"\(8, 8\), \(8, 9\)"):
        complete(np.ones((8, 8), bool), np.zeros((8, 9), bool), "square")


def test_two_object_captions_parse():
    for (a, b), template in itertools.product(itertools.permutations(["red", "cyan", "orange"], 2), (0, 1, 3)):
        objects = [(a, "triangle", "left"), (b, "circle", "shrinking")]
        caption = " and ".join(caption_for(*o, template) for o in objects)
        assert parse_objects(caption) == objects, caption
    assert parse_objects("a red circle and a blue square moving down") == [("red", "circle", None),
                                                                          ("blue", "square", "down")]
    ds = ShapesDataset(length=5, num_objects=2, num_frames=5, height=16, width=16)
    assert all(parse_objects(ds[i]["caption"]) == _labels(ds[i]) for i in range(len(ds)))
    assert set(MOTIONS) <= {parse_objects(caption_for("red", "circle", m))[0][2] for m in MOTIONS}


def test_motion_not_named_is_not_judged():
    frames = _scene(ObjectSpec("red", "circle", "left", cx=40, cy=20, radius=8, speed=2.0),
                    ObjectSpec("blue", "square", "down", cx=20, cy=20, radius=7, speed=2.0))
    result = score_caption(frames, "a red circle and a blue square moving up")
    assert [r["motion_ok"] for r in result["objects"]] == [None, False]
    assert result["colour_shape_right"] and not result["all_right"]
    assert score_caption(frames, "a red circle moving left and a blue square moving down")["all_right"]
    absent = score_caption(frames, "a red circle and a green square")
    assert [r["colour_ok"] for r in absent["objects"]] == [True, False] and not absent["colour_shape_right"]


def test_bad_input_names_the_offending_value():
    frames = np.zeros((5, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="'pink'"):
        judge_objects(frames, ["red", "pink"])
    with pytest.raises(ValueError, match="'red' is named twice"):
        score_caption(frames, "a red circle moving left and a red square growing")
    with pytest.raises(ValueError, match=r"\(5, 16, 16\)"):
        judge_objects(frames[..., 0], ["red"])
    with pytest.raises(ValueError, match="float32"):
        judge_objects(frames.astype(np.float32), ["red"])
    with pytest.raises(ValueError, match="'hexagon'"):
        score_objects(frames, [("red", "hexagon", None)])
    with pytest.raises(ValueError, match="'sideways'"):
        score_objects(frames, [("red", "circle", "sideways")])
    with pytest.raises(ValueError, match="'a thing' in prompt"):
        parse_objects("a red circle and a thing")
    with pytest.raises(ValueError, match="'red'"):
        judge_objects(frames, "red")  # a bare string, not a list of colours
    with pytest.raises(ValueError, match="no verdict for colour 'blue'"):
        score_verdicts(judge_objects(frames, ["red"]), [("red", "circle", None), ("blue", "square", None)])
    empty = judge_objects(frames, ["red"])["red"]
    assert empty["present"] is False and empty["shape"] is None and empty["motion"] is None
