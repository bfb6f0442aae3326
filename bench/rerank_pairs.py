"""Can the tokenizer's own text scores pick the right video of a pair among several seeds? Best-of-N probe.

    python bench/rerank_pairs.py [--model DIR] [--prompts 48] [--num-seeds 8] [--prompt-seed 2]
        [--seed-base 3000000] [--size 128] [--score-size 64]

Two-object prompts (`evaluate_shapes.two_object_prompts`; the defaults are tuning set C) are drawn with
`--num-seeds` seeds each (seed base + k, counted over all videos, as `evaluate_shapes` counts). Each video is
judged (SHAPES.md: both objects right in colour and shape, "c+s"; also in motion, "both right"), re-encoded by the
pipeline's tokenizer (resized to `--score-size` first, when given), and scored against nine captions: its own colours and motions with every pairing of the
three shapes (`retrieval.pyramid_text_scores`, as zero-shot retrieval scores). Groups of N consecutive seeds
of a prompt then keep one video: the first seed (what one draw gives), the highest score for the prompt's own
caption, or any right one (the oracle: a perfect reranker). Last, the same nine-caption choice on fresh
ground-truth clips (Shapes seed 9100) at `--size` and at 64 (the size the alignment head was trained on):
how often the right shapes score highest (chance 1/9).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.evaluate_shapes import TWO_OBJECT, _judge, prompt_text, two_object_prompts  # noqa: E402
from pipelines.video_export import frames_to_uint8  # noqa: E402
from pyratok.data.shapes import ShapesDataset  # noqa: E402
from pyratok.pyramid import TokenPyramid  # noqa: E402
from pyratok.understanding.common import encode_videos  # noqa: E402
from pyratok.understanding.retrieval import encode_queries, pyramid_text_scores  # noqa: E402

SHAPES = ("circle", "square", "triangle")


def shape_captions(item: tuple) -> list[str]:
    """The nine captions with the pair's colours and motions and every pairing of shapes (the item's is one)."""
    (c1, _, m1), (c2, _, m2) = item
    return [prompt_text(TWO_OBJECT, ((c1, a, m1), (c2, b, m2))) for a in SHAPES for b in SHAPES]


def own_scores(tokenizer, text_encoder, pyramid: TokenPyramid, items: list[tuple],
               queries: dict | None = None) -> list[np.ndarray]:
    """Per video of the batch, (9,) scores of its item's nine captions, in `shape_captions` order. `queries`:
    a dict kept across calls, so each item's captions are encoded once however many seeds draw it."""
    queries = {} if queries is None else queries
    out = []
    for b, item in enumerate(items):
        if item not in queries:
            queries[item] = encode_queries(tokenizer, text_encoder, shape_captions(item))
        one = TokenPyramid([bits[b : b + 1] for bits in pyramid.bits], pyramid.latent_grid)
        out.append(pyramid_text_scores(tokenizer, one, queries[item])[0].float().cpu().numpy())
    return out


def best_of(records: list[dict], n: int) -> dict[str, float]:
    """c+s of the kept video per group of n seeds: first seed, highest own-caption score, oracle."""
    by_prompt = defaultdict(list)
    for r in records:
        by_prompt[r["prompt"]].append(r)
    kept = defaultdict(list)
    for videos in by_prompt.values():
        for g in range(0, len(videos) - n + 1, n):
            group = videos[g : g + n]
            kept["first seed"].append(group[0]["both_colour_shape_right"])
            kept["tokenizer score"].append(max(group, key=lambda r: r["own"])["both_colour_shape_right"])
            kept["oracle"].append(any(r["both_colour_shape_right"] for r in group))
    return {k: float(np.mean(v)) for k, v in kept.items()}


@torch.no_grad()
def ground_truth_shape_choice(tokenizer, text_encoder, size: int, n: int = 48, seed: int = 9100) -> float:
    """Share of n fresh two-object Shapes clips (size x size) whose own caption scores highest of its nine."""
    data = ShapesDataset(split="train", length=n, num_frames=17, height=size, width=size, num_objects=2, seed=seed)
    hits = []
    for i in range(n):
        clip = data[i]
        item = tuple((o["colour"], o["shape"], o["motion"]) for o in clip["objects"])
        scores = own_scores(tokenizer, text_encoder, encode_videos(tokenizer, clip["video"][None]), [item])[0]
        hits.append(int(scores.argmax()) == shape_captions(item).index(prompt_text(TWO_OBJECT, item)))
    return float(np.mean(hits))


@torch.no_grad()
def main(argv=None) -> int:
    from pipelines.pipeline_pyratok_t2v import load_pipeline
    from pyratok.default_model import default_model_path
    from pyratok.understanding.loading import load_text_encoder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="pipeline folder (default: the shipped model)")
    parser.add_argument("--prompts", type=int, default=48, help="two-object prompts")
    parser.add_argument("--num-seeds", type=int, default=8, help="videos per prompt (groups of 2, 4, 8 of them)")
    parser.add_argument("--prompt-seed", type=int, default=2)
    parser.add_argument("--seed-base", type=int, default=3_000_000)
    parser.add_argument("--size", type=int, default=None, help="pixels (default: the model's sample size)")
    parser.add_argument("--score-size", type=int, default=None,
                        help="resize the drawn videos to this many pixels before scoring (default: as drawn)")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.num_seeds < 2:
        raise SystemExit(f"--prompts must be >= 1 and --num-seeds >= 2, got {args.prompts} and {args.num_seeds}")
    if args.score_size is not None and args.score_size < 8:
        raise SystemExit(f"--score-size must be at least 8 pixels, got {args.score_size}")
    model = args.model or default_model_path()
    pipe = load_pipeline(model, "cpu")
    tokenizer, text_encoder = pipe.vae, load_text_encoder(model)
    size = args.size or pipe.default_size()[0]
    jobs = [(item, k) for item in two_object_prompts(args.prompts, args.prompt_seed) for k in range(args.num_seeds)]
    records, queries = [], {}
    for start in range(0, len(jobs), args.batch_size):
        chunk = jobs[start : start + args.batch_size]
        seeds = [args.seed_base + start + j for j in range(len(chunk))]
        texts = [prompt_text(TWO_OBJECT, item) for item, _ in chunk]
        pyramid = pipe(texts, generator=[torch.Generator().manual_seed(s) for s in seeds], height=size, width=size,
                       output_type="latent", guidance_scale=args.guidance_scale).frames
        video = pipe.vae.decode(pyramid.latent)  # (b, 3, f, h, w) in [-1, 1]
        frames = pipe.postprocess(video, "np")  # (b, f, h, w, 3) in [0, 1]
        items = [item for item, _ in chunk]
        scored = video.clamp(-1, 1).float()  # (b, 3, f, h, w)
        if args.score_size is not None:
            scored = F.interpolate(scored, size=(scored.shape[2], args.score_size, args.score_size), mode="area")
        scores = own_scores(tokenizer, text_encoder, encode_videos(tokenizer, scored), items, queries)
        for item, text, clip, s in zip(items, texts, frames, scores):
            own = float(s[shape_captions(item).index(text)])
            records.append({"prompt": text, "own": own, **_judge(TWO_OBJECT, item, frames_to_uint8(clip))})
        print(f"{len(records)}/{len(jobs)} videos", flush=True)
    print(f"{args.prompts} two-object prompts x {args.num_seeds} seeds (prompt seed {args.prompt_seed}, seeds from "
          f"{args.seed_base}); one draw: c+s {np.mean([r['both_colour_shape_right'] for r in records]):.3f}, "
          f"both right {np.mean([r['both_right'] for r in records]):.3f}")
    print(f"{'kept of N seeds':<16}" + "".join(f"{name:>18}" for name in ("first seed", "tokenizer score", "oracle")))
    for n in (2, 4, 8):
        if n <= args.num_seeds:
            row = best_of(records, n)
            print(f"{'N = ' + str(n):<16}" + "".join(f"{row[k]:>18.3f}" for k in ("first seed", "tokenizer score",
                                                                                 "oracle")))
    for px in sorted({size, 64}):
        print(f"ground-truth pairs at {px}x{px}: right shapes score highest of nine captions in "
              f"{ground_truth_shape_choice(tokenizer, text_encoder, px):.3f} (chance 0.111)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
