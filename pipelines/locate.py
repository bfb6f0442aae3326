"""`pyratok locate TEXT VIDEO -o OUT`: when and where does a text query appear in a video?

Command-line front of PyraTok's zero-shot temporal localisation and segmentation (§5): writes the
per-frame score curve (scores.png), a heatmap-overlay video (heatmap.mp4) and the segments (segments.json).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

HELP = "find when and where a text query appears in a video (scores.png, heatmap.mp4, segments.json)"


def _threshold(value: str) -> float | str:
    """argparse type: one of THRESHOLD_RULES ("otsu", "midpoint", "low") or a number."""
    from pyratok.understanding.thresholds import THRESHOLD_RULES

    if value in THRESHOLD_RULES:
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be one of {THRESHOLD_RULES} or a number, got {value!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help='the query, e.g. "a red circle"')
    p.add_argument("video", type=Path, help="a video file (anything PyAV reads)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--model", type=Path, default=None,
                   help="pipeline folder (tokenizer/ inside) or tokenizer folder; default: the shipped tokenizer "
                        "(checkpoints/pyratok-tokenizer-tiny)")
    p.add_argument("--threshold", type=_threshold, default="low",
                   help="segments: 'low' (default, 0.15 of the way from the lowest frame score to the highest), "
                        "'midpoint', 'otsu' or a score value; masks use 0.6 of each video's heatmap range")
    p.add_argument("--size", type=int, default=None,
                   help="resize so the short side has this many pixels, aspect kept (default: native size; "
                        "the shipped tokenizer was trained at 64)")
    p.add_argument("--fps", type=float, default=None, help="resample to this frame rate (default: native)")
    p.add_argument("--max-frames", type=int, default=None, help="use at most this many frames from the start")
    p.add_argument("--min-len", type=int, default=2, help="drop segments shorter than this many frames")
    p.add_argument("--merge-gap", type=int, default=2, help="merge segments split by at most this many frames")


def load_clip(path: Path, size: int | None, fps: float | None, max_frames: int | None):
    """(video (3, T, H, W) in [-1, 1], frames uint8 (T, H, W, 3), fps) or VideoReadError/ValueError."""
    import torch
    from einops import rearrange

    from pyratok.data.video_io import probe_video, read_video

    if size is not None and size < 1:
        raise ValueError(f"--size must be a positive number of pixels, got {size}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {max_frames}")
    shape = None
    if size is not None:
        meta = probe_video(path)
        short = min(meta.height, meta.width)
        shape = (max(1, round(meta.height * size / short)), max(1, round(meta.width * size / short)))
    frames, meta = read_video(path, fps=fps, size=shape)
    frames = frames[:max_frames]
    video = rearrange(torch.from_numpy(frames).float() / 127.5 - 1.0, "T H W c -> c T H W")
    return video, frames, fps or meta.fps


def run(args: argparse.Namespace) -> int:
    from pyratok.data.video_io import write_video
    from pyratok.understanding.common import check_text, encode_videos, query_volume
    from pyratok.understanding.loading import load_models
    from pyratok.understanding.localize import frame_scores, localize_scores
    from pyratok.understanding.plots import overlay, save_score_curve
    from pyratok.understanding.segment import SEGMENT_LEVELS, segment_volume

    text = check_text(args.text)
    video, frames, fps = load_clip(args.video, args.size, args.fps, args.max_frames)
    tokenizer, text_encoder = load_models(args.model)
    size = tuple(video.shape[1:])  # (T, H, W)
    pyramid = encode_videos(tokenizer, video)
    volume = query_volume(tokenizer, text_encoder, pyramid, [text])[0, 0].cpu()
    scores = frame_scores(volume, size[0], tokenizer.temporal_factor)
    found = localize_scores(scores, args.threshold, args.min_len, args.merge_gap)
    finest = query_volume(tokenizer, text_encoder, pyramid, [text], SEGMENT_LEVELS)[0, 0].cpu()
    seg = segment_volume(finest, size, tokenizer.temporal_factor, tokenizer.spatial_factor, guide=video)

    args.out.mkdir(parents=True, exist_ok=True)
    curve = save_score_curve(scores, args.out / "scores.png", found.threshold, found.segments,
                             title=f"{text!r} in {args.video.name}", fps=fps)
    movie = write_video(overlay(frames, seg.heatmaps), args.out / "heatmap.mp4", fps=fps)
    record = {"text": text, "video": str(args.video), "fps": fps, "num_frames": size[0], "height": size[1],
              "width": size[2], "mask_threshold": seg.threshold, **found.to_dict(fps)}
    tmp = args.out / f".segments.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, args.out / "segments.json")
    spans = ", ".join(f"{s.start}-{s.end} ({s.start / fps:.2f}-{s.end / fps:.2f} s, score {s.score:.3f})"
                      for s in found.segments) or "none"
    print(f"{text!r}: {len(found.segments)} segment(s) in {size[0]} frames, threshold {found.threshold:.4f}: {spans}")
    print(f"wrote {curve}, {movie}, {args.out / 'segments.json'}")
    return 0
