"""Benchmark zero-shot understanding on multi-object Shapes: retrieval R@k, temporal IoU, segmentation IoU.

Measures PyraTok's zero-shot claims (§5) at Shapes scale for a tokenizer, its no-text-loss ablation and chance:
    python bench/eval_understanding.py --tokenizer DIR [--ablation DIR] [--n 100] [--out DIR]

Protocol (fixed so numbers compare across runs):
- data: ShapesDataset(split, num_objects=2, seed=9001 — a seed training does not use), n clips, 17x64x64.
- retrieval: text->video over the n clips; query i is clip i's caption (both objects, e.g. "a red circle moving
  left and a blue square growing"), its target is clip i; R@1 and R@5 (chance 1/n and 5/n); video->text R@1
  with the same n captions as the gallery. Scores: `retrieval.pyramid_text_scores` (pooled cosine mixed with
  the mean of the caption's phrase scores, `PHRASE_WEIGHT`).
- localisation: every object that enters late or leaves early is queried with "a {colour} {shape}"; temporal
  IoU of its presence (T,) and the frames inside `localize` segments (its defaults: the curve interpolated
  between latent frames, the "low" threshold, min_len 2, merge_gap 2); mean tIoU and the share of objects
  with tIoU >= 0.5. Beside it, "tIoU mid": the rule before session 42 (step curve, midpoint threshold).
- segmentation: every object is queried with "a {colour} {shape}"; IoU of the `segment` masks (the finest
  level's evidence, thresholded at `MASK_THRESHOLD` of the per-video normalised heatmap) and the object's
  masks over the whole clip volume (T x H x W); mean IoU, of the token similarity upsampled as it is
  ("seg mIoU") and refined by the guided filter ("guided", `segment`'s default).
- naming: does the map pick the named object out of the two? For each query, the mean of its heatmap over the
  queried object's pixels against the mean over the other object's pixels (pixels of both excluded); the share
  of queries whose own object scores higher (chance 0.5), on the heatmap as upsampled ("names raw") and on the
  one `segment` returns, refined by the guided filter ("names obj": what a user sees).
- chance: the same post-processing on i.i.d. uniform token similarities on the same latent grid (seed 0);
  retrieval on uniform random scores. "all present": the label-free prior that every object fills every
  frame and pixel — objects are present in most frames, so its tIoU is high; a model must beat it.
Videos are encoded once, without a caption; pictures (retrieval.png, localization.png, segmentation.png) show
the first model.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from pyratok.data.shapes import ShapesDataset, video_to_uint8
from pyratok.understanding.common import encode_videos, query_volume
from pyratok.understanding.localize import frame_scores, localize_scores
from pyratok.understanding.metrics import iou, recall_at_k, temporal_iou
from pyratok.understanding.plots import overlay, save_image_grid, save_score_curve, save_similarity_matrix
from pyratok.understanding.retrieval import encode_queries, pyramid_text_scores, rank
from pyratok.understanding.segment import SEGMENT_LEVELS, segment_volume

COLUMNS = ("t2v R@1", "t2v R@5", "v2t R@1", "tIoU", "tIoU>=.5", "tIoU mid", "seg mIoU", "guided", "names raw",
           "names obj")


def object_query(obj: dict) -> str:
    article = "an" if obj["colour"][0] in "aeiou" else "a"
    return f"{article} {obj['colour']} {obj['shape']}"


def load_data(split: str, n: int, seed: int, num_frames: int, size: int) -> list[dict]:
    ds = ShapesDataset(split=split, length=n, num_frames=num_frames, height=size, width=size, num_objects=2, seed=seed)
    return [ds[i] for i in range(n)]


@torch.no_grad()
def model_outputs(tokenizer, text_encoder, data: list[dict], batch_size: int):
    """Retrieval scores (n videos, n captions) and, per (clip, object), the (t, h, w) query volumes that
    localisation (all levels) and segmentation (the finest level) read."""
    captions = [d["caption"] for d in data]
    phrases = sorted({object_query(o) for d in data for o in d["objects"]})
    queries = encode_queries(tokenizer, text_encoder, captions)
    rows, volumes, seg_volumes = [], {}, {}
    for start in range(0, len(data), batch_size):
        chunk = data[start : start + batch_size]
        pyramid = encode_videos(tokenizer, torch.stack([d["video"] for d in chunk]))
        rows.append(pyramid_text_scores(tokenizer, pyramid, queries).cpu())
        volume = query_volume(tokenizer, text_encoder, pyramid, phrases).cpu()  # (b, p, t, h, w)
        finest = query_volume(tokenizer, text_encoder, pyramid, phrases, SEGMENT_LEVELS).cpu()
        for b, d in enumerate(chunk):
            for j, obj in enumerate(d["objects"]):
                p = phrases.index(object_query(obj))
                volumes[start + b, j], seg_volumes[start + b, j] = volume[b, p], finest[b, p]
    return torch.cat(rows), volumes, seg_volumes


def chance_outputs(data: list[dict], grid: tuple[int, int, int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(len(data), len(data), generator=gen)
    volumes = {(i, j): torch.rand(grid, generator=gen) for i, d in enumerate(data) for j in range(len(d["objects"]))}
    return scores, volumes, volumes


def all_present(data: list[dict]) -> dict:
    """The no-model prior: every object present in every frame and every pixel (retrieval not applicable)."""
    presence = [p for d in data for p in d["presence"]]
    tious = [temporal_iou([(0, p.shape[0], 1.0)], p) for p in presence if not p.all()]
    ious = [iou(torch.ones_like(m), m) for d in data for m in d["object_masks"]]
    return {"t2v R@1": math.nan, "t2v R@5": math.nan, "v2t R@1": math.nan,
            "tIoU": float(np.mean(tious)) if tious else math.nan,
            "tIoU>=.5": float(np.mean([v >= 0.5 for v in tious])) if tious else math.nan, "tIoU mid": math.nan,
            "seg mIoU": float(np.mean(ious)), "guided": math.nan, "names raw": math.nan, "names obj": math.nan}


def score(scores: torch.Tensor, volumes: dict, seg_volumes: dict, data: list[dict], tf: int,
          sf: int) -> tuple[dict, dict]:
    """Metrics from outputs, plus per-item results for the pictures."""
    n = len(data)
    t2v, v2t = rank(scores)
    target = torch.arange(n)
    metrics = {"t2v R@1": recall_at_k(t2v, target, 1), "t2v R@5": recall_at_k(t2v, target, min(5, n)),
               "v2t R@1": recall_at_k(v2t, target, 1)}
    tious, tious_mid, ious, named, found, masks = [], [], [], {"raw": [], "guided": []}, {}, {}
    for (i, j), volume in volumes.items():
        presence, size = data[i]["presence"][j], tuple(data[i]["video"].shape[1:])
        if not presence.all():
            found[i, j] = localize_scores(frame_scores(volume, size[0], tf), min_len=2, merge_gap=2)
            tious.append(temporal_iou(found[i, j].segments, presence))
            step = localize_scores(frame_scores(volume, size[0], tf, interpolate=False), "midpoint", 2, 2)
            tious_mid.append(temporal_iou(step.segments, presence))
        raw = segment_volume(seg_volumes[i, j], size, tf, sf)
        masks[i, j] = segment_volume(seg_volumes[i, j], size, tf, sf, guide=data[i]["video"])
        if len(data[i]["object_masks"]) == 2:
            own, other = data[i]["object_masks"][j], data[i]["object_masks"][1 - j]  # (T, H, W) bool
            own, other = own & ~other, other & ~own
            if own.any() and other.any():
                for kind, heat in (("raw", raw.heatmaps), ("guided", masks[i, j].heatmaps)):
                    named[kind].append(bool(heat[own].mean() > heat[other].mean()))
        ious.append((iou(raw.masks, data[i]["object_masks"][j]), iou(masks[i, j].masks, data[i]["object_masks"][j])))
    metrics["tIoU"] = float(np.mean(tious)) if tious else math.nan
    metrics["tIoU>=.5"] = float(np.mean([v >= 0.5 for v in tious])) if tious else math.nan
    metrics["tIoU mid"] = float(np.mean(tious_mid)) if tious_mid else math.nan
    metrics["seg mIoU"] = float(np.mean([raw for raw, _ in ious]))
    metrics["guided"] = float(np.mean([guided for _, guided in ious]))
    metrics["names raw"] = float(np.mean(named["raw"])) if named["raw"] else math.nan
    metrics["names obj"] = float(np.mean(named["guided"])) if named["guided"] else math.nan
    metrics.update(localised_objects=len(tious), segmented_objects=len(ious), named_queries=len(named["raw"]))
    return metrics, {"scores": scores, "localized": found, "segmented": masks}


def save_pictures(details: dict, data: list[dict], out: Path, name: str) -> list[Path]:
    paths = [save_similarity_matrix(details["scores"].t(), out / "retrieval.png",
                                    f"{name}: caption (row) vs video (column) score; diagonal = match")]
    if details["localized"]:
        (i, j), found = next(iter(details["localized"].items()))
        paths.append(save_score_curve(found.scores, out / "localization.png", found.threshold, found.segments,
                                      data[i]["presence"][j], f"{name}: {object_query(data[i]['objects'][j])!r} "
                                      f"in clip {i} ({data[i]['caption']})"))
    rows = []
    for (i, j), seg in list(details["segmented"].items())[:3]:
        frames = video_to_uint8(data[i]["video"])[::2]
        gt = data[i]["object_masks"][j][::2].float()
        query = object_query(data[i]["objects"][j])
        rows += [(f"clip {i}\n{query!r}", frames), ("heatmap", overlay(frames, seg.heatmaps[::2])),
                 ("mask", overlay(frames, seg.masks[::2].float())), ("label", overlay(frames, gt))]
    paths.append(save_image_grid(rows, out / "segmentation.png", f"{name}: every 2nd frame"))
    return paths


def evaluate_model(path: Path, data: list[dict], batch_size: int):
    from pyratok.understanding.loading import load_models

    tokenizer, text_encoder = load_models(path)
    outputs = model_outputs(tokenizer, text_encoder, data, batch_size)
    return score(*outputs, data, tokenizer.temporal_factor, tokenizer.spatial_factor), tokenizer


def format_table(results: dict) -> str:
    lines = [f"{'method':<12}" + "".join(f"{c:>10}" for c in COLUMNS)]
    for name, metrics in results.items():
        if "error" in metrics:
            lines.append(f"{name:<12}  not available: {metrics['error']}")
            continue
        lines.append(f"{name:<12}" + "".join(f"{metrics[c]:>10.3f}" if not math.isnan(metrics[c]) else f"{'-':>10}"
                                             for c in COLUMNS))
    return "\n".join(lines)


def _finite(x):
    """NaN (no object to score) -> None, so metrics.json stays strict JSON."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    return None if isinstance(x, float) and math.isnan(x) else x


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder or pipeline folder")
    parser.add_argument("--ablation", type=Path, default=None, help="the same tokenizer trained without text losses")
    parser.add_argument("--n", type=int, default=100, help="number of clips")
    parser.add_argument("--out", type=Path, default=Path("outputs/eval_understanding"))
    parser.add_argument("--split", choices=["train", "heldout"], default="train")
    parser.add_argument("--seed", type=int, default=9001, help="Shapes seed (not one training uses)")
    parser.add_argument("--num-frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if args.n < 2:
        raise SystemExit(f"--n must be >= 2 for retrieval, got {args.n}")
    torch.manual_seed(0)  # nothing here should draw from the global generator; pinned in case a model does
    data = load_data(args.split, args.n, args.seed, args.num_frames, args.size)
    (metrics, details), tokenizer = evaluate_model(args.tokenizer, data, args.batch_size)
    results = {"tokenizer": metrics}
    if args.ablation is None:
        results["ablation"] = {"error": "no --ablation folder given"}
    elif not args.ablation.exists():
        results["ablation"] = {"error": f"{args.ablation} does not exist"}
    else:
        try:
            results["ablation"] = evaluate_model(args.ablation, data, args.batch_size)[0][0]
        except (FileNotFoundError, OSError, ValueError) as err:  # a folder that is not a tokenizer
            results["ablation"] = {"error": f"{type(err).__name__}: {err}"}
    grid = tokenizer.latent_grid(args.num_frames, args.size, args.size)
    results["chance"] = score(*chance_outputs(data, grid), data, tokenizer.temporal_factor, tokenizer.spatial_factor)[0]
    results["all present"] = all_present(data)
    pictures = save_pictures(details, data, args.out, "tokenizer")
    print(f"zero-shot understanding, Shapes {args.split} 2 objects, seed {args.seed}, {args.n} clips "
          f"({metrics['localised_objects']} objects enter/leave, {metrics['segmented_objects']} segmented)")
    print(format_table(results))
    report = {"protocol": vars(args) | {"tokenizer": str(args.tokenizer), "ablation": str(args.ablation),
                                        "out": str(args.out)}, "results": results}
    (args.out / "metrics.json").write_text(json.dumps(_finite(report), indent=2) + "\n")
    print("wrote " + ", ".join(str(p) for p in [*pictures, args.out / "metrics.json"]))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
