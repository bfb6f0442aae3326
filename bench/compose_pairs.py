"""Two-object prompts drawn as layers (the pipeline's `compose_phrases`) beside one joint draw and beside two
composites that do without the tokenizer's maps; a picture of the layers and their maps.

    python bench/compose_pairs.py [--model DIR] [--prompts 24] [--num-seeds 2] [--prompt-seed 2]
        [--seed-base 3000000] [--layer-candidates 3] [--sheet docs/compose_pairs.jpg] [--sheet-rows 4]

Prompts are `evaluate_shapes.two_object_prompts` (the defaults: tuning set C's first 24 prompts, seeds from
3,000,000, counted over all videos as `evaluate_shapes` counts); each video is judged as SHAPES.md says (both
objects right in colour and shape, "c+s"; also in motion, "both right"). Rows, all from the same draws:
- joint: the caption drawn at once (`compose_phrases=False`);
- layers: each phrase drawn alone, composited by the vae's maps of the phrases (the pipeline, `compose.composite`);
- first layer only: the composite with every map equal (ties go to the first phrase): no maps;
- brightest layer: each pixel from the brighter layer, a rule that knows the background is black.
Beside them, how much the kept layers' objects overlap (`compose.overlap` of their masks, all frames): with
`--layer-candidates 1` each phrase is drawn once, so the overlap of independent draws.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.compose import MASK_THRESHOLD, composite, overlap  # noqa: E402
from pipelines.evaluate_shapes import TWO_OBJECT, _judge, prompt_text, two_object_prompts  # noqa: E402
from pipelines.video_export import frames_to_uint8  # noqa: E402
from pyratok.understanding.plots import overlay, save_image_grid  # noqa: E402

ROWS = ("joint", "layers", "first layer only", "brightest layer")


def composites(draw) -> dict[str, torch.Tensor]:
    """The three composites of a `LayeredDraw`: (b, 3, f, h, w) each."""
    brightness = draw.layers.amax(dim=1)  # (n, f, h, w)
    return {"layers": composite(draw.layers, draw.maps, draw.counts),
            "first layer only": composite(draw.layers, torch.zeros_like(draw.maps), draw.counts),
            "brightest layer": composite(draw.layers, brightness, draw.counts)}


def mid(video: torch.Tensor) -> np.ndarray:
    """(3, f, h, w) in [-1, 1] -> its middle frame, uint8 (h, w, 3)."""
    return frames_to_uint8(((video.clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).numpy())[video.shape[1] // 2]


def sheet_row(joint: np.ndarray, draw, composed: torch.Tensor, first: int) -> np.ndarray:
    """Middle frames (6, h, w, 3): joint draw, layer 1, its map, layer 2, its map, composite (two-layer video)."""
    frames = [joint]
    for n in (first, first + 1):
        layer = mid(draw.layers[n])
        frames += [layer, overlay(layer[None], draw.maps[n][draw.maps.shape[1] // 2][None].numpy())[0]]
    return np.stack(frames + [mid(composed)])


def main() -> None:
    from pipelines.pipeline_pyratok_t2v import load_pipeline
    from pyratok.default_model import default_model_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="pipeline folder (default: the shipped model)")
    p.add_argument("--prompts", type=int, default=24, help="two-object prompts")
    p.add_argument("--num-seeds", type=int, default=2, help="videos per prompt")
    p.add_argument("--prompt-seed", type=int, default=2, help="seed of the prompt subset (2: tuning set C)")
    p.add_argument("--seed-base", type=int, default=3_000_000, help="first generation seed")
    p.add_argument("--layer-candidates", type=int, default=3, help="draws of each layer to pick from")
    p.add_argument("--batch-size", type=int, default=4, help="videos per pipeline call")
    p.add_argument("--sheet", type=Path, default=None, help="PNG: layers, maps and composite of the first videos")
    p.add_argument("--sheet-rows", type=int, default=4, help="videos in the picture")
    args = p.parse_args()
    pipe = load_pipeline((args.model or default_model_path()).resolve(), "cpu")
    pipe.set_progress_bar_config(disable=True)
    jobs = [item for item in two_object_prompts(args.prompts, args.prompt_seed) for _ in range(args.num_seeds)]
    verdicts, overlaps = {row: [] for row in ROWS}, []
    picture = []
    for start in range(0, len(jobs), args.batch_size):
        items = jobs[start : start + args.batch_size]
        texts = [prompt_text(TWO_OBJECT, item) for item in items]
        seeds = range(args.seed_base + start, args.seed_base + start + len(items))
        joint = pipe(texts, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="pt",
                     compose_phrases=False).frames  # (b, f, 3, h, w) in [0, 1]
        draw = pipe.draw_layers(texts, generator=[torch.Generator().manual_seed(s) for s in seeds],
                                layer_candidates=args.layer_candidates)
        masks = draw.maps >= MASK_THRESHOLD  # (2b, f, h, w): two layers per video
        firsts = [sum(draw.counts[:b]) for b in range(len(items))]  # each video's first layer
        overlaps += [overlap(masks[n], masks[n + 1]) for n in firsts]
        videos = {"joint": joint.permute(0, 2, 1, 3, 4) * 2 - 1, **composites(draw)}  # each (b, 3, f, h, w)
        for row, batch in videos.items():
            for item, video in zip(items, batch):
                verdicts[row].append(_judge(TWO_OBJECT, item, frames_to_uint8(((video + 1) / 2).permute(1, 2, 3, 0))))
        for b, text in enumerate(texts):
            if len(picture) < args.sheet_rows and b % args.num_seeds == 0:
                picture.append((text.replace(" and ", " and\n"),
                                sheet_row(mid(videos["joint"][b]), draw, videos["layers"][b], firsts[b])))
        done = len(verdicts["joint"])
        print(f"{done}/{len(jobs)} " + "  ".join(
            f"{row}: {np.mean([v['both_colour_shape_right'] for v in verdicts[row]]):.3f}" for row in ROWS), flush=True)
    print(f"\n{len(jobs)} videos ({args.prompts} prompts x {args.num_seeds} seeds, prompt seed {args.prompt_seed}, "
          f"seeds from {args.seed_base})")
    print(f"{'':18s} {'c+s':>6s} {'both right':>11s}")
    for row in ROWS:
        cs = np.mean([v["both_colour_shape_right"] for v in verdicts[row]])
        both = np.mean([v["both_right"] for v in verdicts[row]])
        print(f"{row:18s} {cs:6.1%} {both:11.1%}")
    print(f"kept layers' objects overlap: {np.mean(overlaps):.1%} of the smaller one on average; "
          f"more than a quarter of it in {np.mean(np.array(overlaps) > 0.25):.1%} of videos "
          f"({args.layer_candidates} candidates per layer)")
    if args.sheet is not None:
        save_image_grid(picture, args.sheet, title="middle frames: joint draw | layer 1 | its map | layer 2 | its map "
                        "| layers composited")
        print(f"wrote {args.sheet}")


if __name__ == "__main__":
    main()
