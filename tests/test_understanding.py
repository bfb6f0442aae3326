"""Tests for zero-shot understanding: thresholds, segments, localisation, segmentation, retrieval, CLI, benchmark.

Covers pyratok/understanding/, pipelines/locate.py and bench/eval_understanding.py on synthetic signals and a
tiny random tokenizer (numbers are chance-level; shapes, ranges and errors are what is checked).
"""
from __future__ import annotations

import importlib.util
import json
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from factories import tiny_tokenizer

from pyratok.understanding import (
    classify, fit_video, fitted_size, frame_scores, iou, localize, localize_scores, otsu_threshold, range_threshold,
    recall_at_k, resolve_threshold, retrieve, segment, segment_volume, segments_from_scores, temporal_iou,
)
from pyratok.understanding.refine import guided_filter
from pyratok.understanding.segment import MASK_THRESHOLD, SEGMENT_LEVELS

class FakeTextEncoder:
    """Stands in for MiniLM: a fixed random unit vector per text (seeded by its crc32)."""

    def __init__(self, dim: int = 384):
        self.dim = dim

    def __call__(self, texts: list[str]) -> SimpleNamespace:
        rows = [torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts]
        return SimpleNamespace(pooled=torch.nn.functional.normalize(torch.stack(rows), dim=-1))


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(text_dim=384)


@pytest.fixture(scope="module")
def tokenizer_dir(tokenizer, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


def random_video(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, frames, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- pure functions -----------------------------------------------------------------------------
def test_segments_from_scores_finds_runs_merges_gaps_and_drops_short_ones():
    x = np.zeros(20)
    x[5:12] = 1.0
    assert segments_from_scores(x, 0.5) == [(5, 12, 1.0)]
    x[[3, 4]] = 0.8  # touches the run: one segment from 3
    x[15], x[19] = 0.9, 0.7  # a blip and a run at the very end
    segs = segments_from_scores(x, 0.5)
    assert [(s.start, s.end) for s in segs] == [(3, 12), (15, 16), (19, 20)]
    assert [(s.start, s.end) for s in segments_from_scores(x, 0.5, min_len=2)] == [(3, 12)]
    merged = segments_from_scores(x, 0.5, min_len=2, merge_gap=3)
    assert [(s.start, s.end) for s in merged] == [(3, 20)]  # gaps of 3 merge before the length filter
    assert merged[0].score == pytest.approx(x[3:20].mean())
    assert segments_from_scores(np.zeros(5), 0.5) == [] and segments_from_scores(np.ones(5), 1.0) == [(0, 5, 1.0)]


def test_segments_recovered_from_noisy_signal_with_adaptive_thresholds():
    rng = np.random.default_rng(0)
    truth = np.zeros(60, bool)
    truth[10:25] = truth[40:52] = True
    x = np.where(truth, 0.6, 0.1) + rng.normal(0, 0.08, 60)
    for rule in (None, "otsu", "midpoint"):
        value = resolve_threshold(x, rule)
        assert 0.2 < value < 0.5
        segs = segments_from_scores(x, value, min_len=3, merge_gap=2)
        assert [(s.start, s.end) for s in segs] == [(10, 25), (40, 52)], rule
        assert temporal_iou(segs, torch.from_numpy(truth)) == 1.0


@pytest.mark.parametrize("kwargs, match", [
    ({"scores": []}, "non-empty 1-D"), ({"scores": np.zeros((2, 3))}, "non-empty 1-D"),
    ({"scores": [0.1, float("nan")]}, "finite"), ({"threshold": float("inf")}, "threshold"),
    ({"min_len": 0}, "min_len"), ({"merge_gap": -1}, "merge_gap"), ({"min_len": 1.5}, "min_len"),
])
def test_segments_from_scores_rejects_bad_inputs(kwargs, match):
    args = {"scores": [0.0, 1.0], "threshold": 0.5} | kwargs
    with pytest.raises(ValueError, match=match):
        segments_from_scores(**args)


def test_thresholds():
    assert 0.2 < otsu_threshold([0.1, 0.12, 0.11, 0.9, 0.95]) < 0.9
    assert otsu_threshold(torch.full((7,), 0.3)) == pytest.approx(0.3)
    assert resolve_threshold([0.0, 1.0, 0.2], "midpoint") == 0.5
    assert resolve_threshold([2.0, 4.0, 3.0], "low") == pytest.approx(2.3) == range_threshold([4.0, 2.0], 0.15)
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(ValueError, match="fraction"):
            range_threshold([0.0, 1.0], bad)
    assert resolve_threshold([0.0, 1.0], 0.25) == 0.25 and resolve_threshold([0.0], np.float32(0.5)) == 0.5
    for bad in ("mean", True, float("nan"), [0.5]):
        with pytest.raises(ValueError, match="threshold"):
            resolve_threshold([0.0, 1.0], bad)
    with pytest.raises(ValueError, match="empty"):
        otsu_threshold([])


def test_fit_video_pads_without_dropping_frames_or_pixels():
    video = random_video(6, 12, 17)[None]  # (1, 3, 6, 12, 17)
    fitted = fit_video(video, 4, 8)
    assert fitted.shape == (1, 3, 9, 16, 24) and fitted_size(6, 12, 17, 4, 8) == (9, 16, 24)
    assert torch.equal(fitted[:, :, :6, :12, :17], video)
    assert torch.equal(fitted[:, :, 8, :12, :17], video[:, :, 5])  # last frame repeated
    assert torch.equal(fitted[:, :, :6, 15, :17], video[:, :, :, 11])  # bottom row replicated
    assert fit_video(video[:, :, :5, :8, :16], 4, 8).shape == (1, 3, 5, 8, 16)  # already valid: unchanged
    assert fitted_size(1, 1, 1, 4, 8) == (1, 8, 8)
    with pytest.raises(ValueError, match="at least 1 frame"):
        fitted_size(0, 8, 8, 4, 8)


def test_frame_scores_map_latent_frames_to_video_frames_and_localise():
    volume = torch.zeros(5, 4, 4)  # 17 frames -> latent t = 5
    volume[2:4, 1, 2] = 1.0  # one hot token in latent frames 2 and 3 = video frames 5..12
    step = frame_scores(volume, 17, temporal_factor=4, top_fraction=1 / 16, interpolate=False)
    assert step.shape == (17,) and step[5:13].eq(1).all() and step[:5].eq(0).all() and step[13:].eq(0).all()
    ramp = torch.arange(5.0)[:, None, None].expand(5, 2, 2)  # latent frame j scores j
    assert frame_scores(ramp, 17, 4, interpolate=False).tolist() == [0] + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    # interpolated: latent frame k >= 1 sits at the centre of its frames, 4k - 1.5; the ends hold their value
    smooth = frame_scores(ramp, 17, 4)
    assert smooth[[0, 15, 16]].tolist() == [0, 4, 4] and smooth[3].item() == pytest.approx(1.125)
    assert torch.allclose(smooth[3:15].diff(), torch.full((11,), 0.25))
    scores = frame_scores(volume, 17, temporal_factor=4, top_fraction=1 / 16)
    assert scores[7:11].eq(1).all() and scores[[3, 14]].allclose(torch.tensor(0.125))
    assert [(s.start, s.end) for s in localize_scores(scores, "midpoint").segments] == [(5, 13)]
    found = localize_scores(scores)  # "low": 0.15 of the range, so frames whose centre is near also count
    assert found.threshold == pytest.approx(0.15) and [(s.start, s.end) for s in found.segments] == [(4, 14)]
    assert frame_scores(volume, 14, 4).shape == (14,)  # a padded clip: cropped back to its own frames
    assert torch.equal(frame_scores(volume, 14, 4, top_fraction=1 / 16), scores[:14])
    with pytest.raises(ValueError, match="top_fraction"):
        frame_scores(volume, 17, 4, top_fraction=0.0)
    with pytest.raises(ValueError, match="latent frames"):
        frame_scores(volume, 21, 4)


def test_segment_volume_upsamples_crops_and_normalises():
    volume = torch.zeros(3, 2, 3)  # a 9x12x20 clip, fitted to 9x16x24
    volume[1, 0, 2] = 1.0  # latent frame 1 = video frames 1..4, top-right token
    seg = segment_volume(volume, (9, 12, 20), temporal_factor=4, spatial_factor=8, threshold="otsu")
    assert seg.heatmaps.shape == seg.masks.shape == (9, 12, 20) and seg.masks.dtype == torch.bool
    assert float(seg.heatmaps.min()) == 0.0 and float(seg.heatmaps.max()) == 1.0
    assert seg.masks[1:5, :4, -4:].all() and not seg.masks[0].any() and not seg.masks[5:].any()
    assert not seg.masks[1:5, :, :8].any()
    assert segment_volume(volume, (9, 12, 20), 4, 8).threshold == MASK_THRESHOLD
    assert segment_volume(torch.zeros(3, 2, 3), (9, 12, 20), 4, 8).heatmaps.eq(0).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        segment_volume(volume, (9, 12, 20), 4, 8, threshold=1.5)
    with pytest.raises(ValueError, match="does not belong"):
        segment_volume(volume, (9, 32, 32), 4, 8)


def test_guided_refinement_snaps_a_token_blob_to_the_object_edges():
    volume = torch.zeros(1, 4, 4)  # one frame, 32x32 pixels, 8-px tokens; the object sits in token (1, 1)
    volume[0, 1, 1] = 1.0
    truth = torch.zeros(1, 32, 32, dtype=torch.bool)
    truth[0, 9:15, 9:15] = True  # a sharp 6x6 square inside that token
    video = torch.where(truth, 1.0, -1.0).expand(3, 1, 32, 32)  # white square on black
    raw = segment_volume(volume, (1, 32, 32), 4, 8)
    guided = segment_volume(volume, (1, 32, 32), 4, 8, guide=video)
    assert iou(guided.masks, truth) > max(0.8, iou(raw.masks, truth) + 0.2)
    with pytest.raises(ValueError, match="does not match"):
        segment_volume(volume, (1, 32, 32), 4, 8, guide=video[:, :, :16])
    with pytest.raises(ValueError, match="radius"):
        guided_filter(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), radius=0)


def test_metrics():
    ranked = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2]])
    assert recall_at_k(ranked, torch.tensor([0, 1, 2]), 1) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, torch.tensor([0, 1, 2]), 3) == 1.0
    assert iou(torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)) == 1.0
    assert temporal_iou([(2, 6, 1.0)], torch.tensor([0, 0, 0, 1, 1, 1, 1, 1], dtype=torch.bool)) == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(ranked, torch.tensor([0, 1, 2]), 4)


# ---- with a tiny random tokenizer ------------------------------------------------------------------
def test_localize_and_segment_on_any_video_size(tokenizer):
    video = random_video(6, 20, 28)  # neither 1 + 4k frames nor multiples of 8
    found = localize(tokenizer, FakeTextEncoder(), video, "a red circle")
    assert found.scores.shape == (6,) and torch.isfinite(found.scores).all() and found.scores.abs().max() <= 1
    assert all(0 <= s.start < s.end <= 6 for s in found.segments)
    assert json.loads(json.dumps(found.to_dict(fps=8)))["segments"] == found.to_dict(fps=8)["segments"]
    heat, masks, value = segment(tokenizer, FakeTextEncoder(), video, "a red circle", threshold=0.5)
    assert heat.shape == masks.shape == (6, 20, 28) and masks.dtype == torch.bool and value == 0.5
    assert 0.0 <= float(heat.min()) and float(heat.max()) <= 1.0
    assert localize(tokenizer, FakeTextEncoder(), video[:, :1], "a red circle").scores.shape == (1,)


def test_query_volume_contrasts_with_the_background_text_when_the_head_has_one():
    from pyratok.understanding.common import encode_texts, encode_videos, query_volume, similarity_volume

    plain = tiny_tokenizer(text_dim=384)
    with_background = tiny_tokenizer(text_dim=384, alignment_config={"background_text": "background"})
    video, texts, enc = random_video(5, 16, 16), ["a red circle", "a blue square"], FakeTextEncoder()
    pyramid = encode_videos(plain, video)
    raw = similarity_volume(plain, pyramid, encode_texts(plain, enc, texts))
    assert torch.equal(query_volume(plain, enc, pyramid, texts), raw)
    background = similarity_volume(plain, pyramid, encode_texts(plain, enc, ["background"]))
    assert torch.allclose(query_volume(with_background, enc, pyramid, texts), raw - background)


def test_query_volume_of_chosen_levels():
    from pyratok.understanding.common import encode_texts, encode_videos, query_volume, similarity_volume

    tok, enc, texts = tiny_tokenizer(text_dim=384), FakeTextEncoder(), ["a red circle", "a blue square"]
    pyramid = encode_videos(tok, random_video(5, 16, 16))
    pooled = encode_texts(tok, enc, texts)
    maps = tok.alignment.similarity_maps(pyramid.bits, tok.alignment.text_embedding(pooled))  # per level
    finest = similarity_volume(tok, pyramid, pooled, levels=SEGMENT_LEVELS)
    assert torch.allclose(finest, maps[-1], atol=1e-6)
    every = list(range(len(maps)))
    assert torch.allclose(similarity_volume(tok, pyramid, pooled, levels=every), similarity_volume(tok, pyramid, pooled))
    assert torch.equal(query_volume(tok, enc, pyramid, texts, SEGMENT_LEVELS), finest)
    for bad in ([], [len(maps)], [0, 0], [-len(maps) - 1]):
        with pytest.raises(ValueError, match="levels must be"):
            similarity_volume(tok, pyramid, pooled, levels=bad)


def test_classify_and_retrieve(tokenizer):
    videos = torch.stack([random_video(5, 16, 16, seed=s) for s in range(3)])
    texts = ["a red circle", "a blue square", "a green triangle", "a white circle"]
    result = classify(tokenizer, FakeTextEncoder(), videos, texts, batch_size=2)
    assert result.scores.shape == result.probs.shape == (3, 4) and result.labels.shape == (3,)
    assert torch.allclose(result.probs.sum(-1), torch.ones(3)) and result.scores.abs().max() <= 1 + 1e-5
    ranked = retrieve(tokenizer, FakeTextEncoder(), videos, texts)
    assert torch.allclose(ranked.scores, result.scores, atol=1e-5)
    assert ranked.text_to_video.shape == (4, 3) and ranked.video_to_text.shape == (3, 4)
    assert (ranked.text_to_video.sort(-1).values == torch.arange(3)).all()
    assert (ranked.scores.gather(1, ranked.video_to_text).diff(dim=1) <= 0).all()


def test_scores_mix_pooled_cosine_and_phrase_evidence(tokenizer):
    from pyratok.alignment import top_fraction_mean
    from pyratok.understanding import encode_queries, pyramid_text_scores
    from pyratok.understanding.common import encode_texts, encode_videos, similarity_volume

    enc = FakeTextEncoder()
    texts = ["a red circle and a blue square", "a blue square", "a red circle and a red circle"]
    queries = encode_queries(tokenizer, enc, texts)
    assert queries.phrases.shape[0] == 2 and torch.allclose(queries.membership.sum(-1), torch.ones(3))
    pyramid = encode_videos(tokenizer, torch.stack([random_video(5, 16, 16, seed=s) for s in range(2)]))
    pooled = tokenizer.video_text_similarity(pyramid, encode_texts(tokenizer, enc, texts)).float()
    assert torch.allclose(pyramid_text_scores(tokenizer, pyramid, queries, phrase_weight=0.0), pooled)
    phrase = top_fraction_mean(similarity_volume(tokenizer, pyramid, encode_texts(tokenizer, enc, ["a blue square",
                                                                                                 "a red circle"])), 0.1)
    expected = torch.stack([phrase.mean(-1), phrase[:, 0], phrase[:, 1]], dim=-1)  # both / blue / red (repeat once)
    assert torch.allclose(pyramid_text_scores(tokenizer, pyramid, queries, phrase_weight=1.0), expected, atol=1e-6)
    half = pyramid_text_scores(tokenizer, pyramid, queries, phrase_weight=0.5)
    assert torch.allclose(half, 0.5 * pooled + 0.5 * expected, atol=1e-6)
    with pytest.raises(ValueError, match="phrase_weight must be in"):
        pyramid_text_scores(tokenizer, pyramid, queries, phrase_weight=1.5)


@pytest.mark.parametrize("call, match", [
    (lambda tok, te, v: classify(tok, te, v, []), "empty list"),
    (lambda tok, te, v: retrieve(tok, te, v, ["a red circle"], phrase_weight=-0.1), "phrase_weight"),
    (lambda tok, te, v: retrieve(tok, te, v, ["a red circle", "  "]), "text 1"),
    (lambda tok, te, v: localize(tok, te, v, ""), "non-empty string"),
    (lambda tok, te, v: segment(tok, te, v, None), "non-empty string"),
    (lambda tok, te, v: localize(tok, te, torch.stack([v, v]), "a red circle"), "one video"),
    (lambda tok, te, v: localize(tok, te, ((v + 1) * 127.5).to(torch.uint8), "a red circle"), "float"),
    (lambda tok, te, v: segment(tok, te, v * 3, "a red circle"), r"\[-1, 1\]"),
    (lambda tok, te, v: localize(tok, te, v[0], "a red circle"), r"\(3, T, H, W\)"),
    (lambda tok, te, v: localize(tok, FakeTextEncoder(512), v, "a red circle"), "512-d"),
])
def test_bad_inputs_raise_clear_errors(tokenizer, call, match):
    with pytest.raises(ValueError, match=match):
        call(tokenizer, FakeTextEncoder(), random_video(5, 16, 16))


# ---- command line and benchmark (real MiniLM text encoder) -----------------------------------------
def test_locate_command_writes_curve_overlay_and_segments(tokenizer_dir, tmp_path, capsys):
    from pipelines.cli import main
    from pyratok.data.shapes import ShapesDataset, video_to_uint8
    from pyratok.data.video_io import read_video, write_video

    clip = ShapesDataset(length=1, num_frames=10, height=40, width=36, seed=3)[0]
    path = write_video(video_to_uint8(clip["video"]), tmp_path / "clip.mp4", fps=8)
    out = tmp_path / "out"
    assert main(["locate", "a red circle", str(path), "-o", str(out), "--model", str(tokenizer_dir)]) == 0
    assert "segment(s) in 10 frames" in capsys.readouterr().out
    record = json.loads((out / "segments.json").read_text())
    assert record["num_frames"] == 10 and len(record["scores"]) == 10 and record["fps"] == 8
    assert all(0 <= s["start_frame"] < s["end_frame"] <= 10 and "start_s" in s for s in record["segments"])
    assert (out / "scores.png").stat().st_size > 0
    assert read_video(out / "heatmap.mp4")[0].shape == (10, 40, 36, 3)


def test_locate_command_errors(tokenizer_dir, tmp_path, capsys):
    from pipelines.cli import main
    from pyratok.data.video_io import write_video

    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    cases = [(["locate", " ", str(tmp_path / "broken.mp4")], "non-empty string"),
             (["locate", "a red circle", str(tmp_path / "broken.mp4")], "broken.mp4"),
             (["locate", "a red circle", str(tmp_path / "missing.mp4")], "file not found")]
    for argv, match in cases:
        assert main([*argv, "-o", str(tmp_path / "o"), "--model", str(tokenizer_dir)]) == 1
        assert match in capsys.readouterr().err
    good = write_video(np.zeros((5, 16, 16, 3), np.uint8), tmp_path / "good.mp4")
    assert main(["locate", "a red circle", str(good), "-o", str(tmp_path / "o"),
                 "--model", str(tmp_path / "nowhere")]) == 1
    assert "nowhere does not exist" in capsys.readouterr().err


def test_eval_understanding_runs_on_a_tiny_tokenizer(tokenizer_dir, tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "bench" / "eval_understanding.py"
    spec = importlib.util.spec_from_file_location("eval_understanding", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = bench.main(["--tokenizer", str(tokenizer_dir), "--n", "6", "--out", str(tmp_path),
                         "--ablation", str(tmp_path / "missing")])
    printed = capsys.readouterr().out
    assert "chance" in printed and "not available" in printed and "t2v R@1" in printed
    results = report["results"]
    for name in ("tokenizer", "chance"):
        assert 0 <= results[name]["t2v R@1"] <= 1 and 0 <= results[name]["seg mIoU"] <= 1
    assert "error" in results["ablation"]
    assert json.loads((tmp_path / "metrics.json").read_text())["protocol"]["seed"] == 9001
    for picture in ("retrieval.png", "segmentation.png"):
        assert (tmp_path / picture).stat().st_size > 0


def test_eval_understanding_names_the_queried_object():
    path = Path(__file__).resolve().parents[1] / "bench" / "eval_understanding.py"
    spec = importlib.util.spec_from_file_location("eval_understanding", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = bench.load_data("train", 8, 9001, 9, 64)
    tf, sf = 4, 8

    def oracle(mask):  # (T, H, W) bool -> (t, h, w): the mask's share of each token, at the latent frames
        return torch.nn.functional.avg_pool2d(mask[::tf].float()[:, None], sf)[:, 0]

    for swap, expect in ((False, 1.0), (True, 0.0)):
        volumes = {(i, j): oracle(d["object_masks"][1 - j if swap else j]) for i, d in enumerate(data)
                   for j in range(2)}
        metrics, _ = bench.score(torch.eye(len(data)), volumes, volumes, data, tf, sf)
        assert metrics["named_queries"] >= 12, metrics
        assert abs(metrics["names raw"] - expect) <= 0.1 and abs(metrics["names obj"] - expect) <= 0.1, (swap, metrics)
