"""Which level of the token pyramid a generator loses a prompt's colour, shape or motion at.

    python bench/level_oracle.py --tokenizer DIR --generator DIR [--size 64] [--n 48] [--seed 77]
        [--temperature 1.0] [--finest-decode sample|expected] [--finest-bits N] [--refiner DIR] [--keep K ...]
        [--shape circle|square|triangle] [--two-objects]

Encodes `n` fresh single-object Shapes train clips (seed 77: no token cache is built from it) with their
captions, then for k = 0 .. L keeps the clip's own first k levels (`generate(prefix_bits=...)`) and lets
the generator sample the rest from the caption, decodes and judges the video as SHAPES.md does (`--keep K`,
repeatable: only those k). k = 0 is plain generation, k = L the tokenizer's reconstruction. The level after
which an attribute jumps is the one the generator fails to draw it at. `--finest-bits N` decodes every
video from the first N bits of each finest token only (bench/finest_bits.py), to set the generator's first
bit groups beside the clip's own. Beside each share judged right it prints the mean fill ratio the shape is
judged by (object area / box area on the middle frame: circle 0.785, square 1, triangle 0.5); `--shape S`
measures only clips of that shape (the first n of the seed that show it), to see where its outline is lost.
`--two-objects` measures two-object clips instead, judged per pair as SHAPES.md says: both objects right in
colour and shape ("pair_colour_shape"), and also in motion ("pair_right").
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from generator import PyraTokGenerator  # noqa: E402
from generator.refiner import LatentRefiner  # noqa: E402
from generator.sampling import (FINEST_DECODES, GUIDANCE_SCHEDULE_HELP, parse_guidance_schedule,  # noqa: E402
                                temperature_per_level)
from pyratok.data.shapes import SHAPES, ShapesDataset, video_to_uint8  # noqa: E402
from pyratok.data.shapes_judge import judge_video, score_caption  # noqa: E402
from pyratok.evaluate import JUDGED, judged_right  # noqa: E402
from pyratok.text_encoder import TextEncoder, join_phrases, text_reading  # noqa: E402
from pyratok.tokenizer import PyraTokTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from finest_bits import decode_keeping  # noqa: E402


PAIR_JUDGED = ("pair_colour_shape", "pair_right")  # two-object clips: both right in colour + shape / also in motion


def pair_verdict(frames: np.ndarray, caption: str) -> tuple[float, float]:
    """A two-object clip's uint8 frames against its caption (SHAPES.md's two-object check): (both objects right
    in colour and shape, both also in motion)."""
    return pair_scores(score_caption(frames, caption))


def pair_scores(scored: dict) -> tuple[float, float]:
    """The two verdicts of a `score_caption` result: (both right in colour and shape, both also in motion)."""
    return float(scored["colour_shape_right"]), float(scored["all_right"])


def read_as(config, text, phrases):
    """The caption's states (b, s, d) and mask (b, s) as a model with this config reads them (`text_reading`):
    its token states, its phrase vectors (`TextEncoder.phrases`, or None when no model reads them), or both."""
    reading = text_reading(config)
    if not reading["phrases"]:
        return text.hidden_states, text.attention_mask
    return join_phrases(text.hidden_states, text.attention_mask, *phrases, words=reading["words"])


@torch.no_grad()
def judge_prefixes(tokenizer, model, text_encoder, items: list[dict], guidance_scale: float = 3.0,
                   guidance_schedule=None, seed: int = 0, batch_size: int = 8, temperature: float = 1.0,
                   finest_decode: str = "sample", finest_bits: int | None = None,
                   finest_conv_passes: int | None = None, refiner=None,
                   keeps: list[int] | None = None, two_objects: bool = False) -> dict[int, dict[str, float]]:
    """{levels kept: {attribute: share judged right, "fill_ratio": mean fill ratio}} for every number of kept
    levels 0 .. L (or `keeps`); the sampled levels are drawn at `temperature`, the finest one decoded as
    `finest_decode` says (`generator.sampling.generate`), or from its first `finest_bits` bits only (drawn
    bits); with a `refiner` (`generator.refiner.LatentRefiner`) the drawn z_hat is refined from the caption, as
    the refiner reads it, before decoding (a "flow" refiner reads only the first `keep_levels` levels and draws
    the rest, so the clip's levels from keep_levels on are not used). two_objects: the items are two-object clips,
    judged per pair ({levels kept: {"pair_colour_shape": ..., "pair_right": ...}})."""
    num_levels = model.config.num_levels
    levels = len(tokenizer.quantizer.config.level_strides)
    if levels != num_levels:
        raise ValueError(f"the tokenizer has {levels} levels, the generator {num_levels}")
    if finest_bits is not None and (not 0 <= finest_bits <= model.config.num_bits or finest_decode != "sample"):
        raise ValueError(f"finest_bits must be in [0, {model.config.num_bits}] with drawn bits "
                         f"(finest_decode 'sample'), got {finest_bits} with {finest_decode!r}")
    if refiner is not None and finest_bits is not None:
        raise ValueError("a refiner reads the whole drawn z_hat: leave finest_bits None with a refiner")
    keeps = list(range(num_levels + 1)) if keeps is None else sorted(set(keeps))
    if not all(0 <= k <= num_levels for k in keeps):
        raise ValueError(f"levels kept must be in [0, {num_levels}], got {keeps}")
    attributes = PAIR_JUDGED if two_objects else (*JUDGED, "fill_ratio")
    right = {k: {a: [] for a in attributes} for k in keeps}
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        video = torch.stack([x["video"] for x in chunk])
        captions = [x["caption"] for x in chunk]
        text = text_encoder(captions)
        pyramid = tokenizer.encode(video, text.hidden_states, text.attention_mask)
        readers = [model] if refiner is None else [model, refiner]
        phrases = text_encoder.phrases(captions) if any(text_reading(m.config)["phrases"] for m in readers) else None
        states, mask = read_as(model.config, text, phrases)  # the caption as the generator reads it
        ref_states, ref_mask = (states, mask) if refiner is None else read_as(refiner.config, text, phrases)
        for keep in keeps:
            gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
            sampled = model.generate(tokenizer.quantizer, states, mask,
                                     pyramid.latent_grid, guidance_scale=guidance_scale,
                                     guidance_schedule=guidance_schedule, generator=gens,
                                     temperature=temperature, finest_decode=finest_decode,
                                     finest_conv_passes=finest_conv_passes,
                                     prefix_bits=pyramid.bits[:keep])
            if refiner is not None:
                z_hat = refiner.condition(sampled, tokenizer.quantizer)  # flow: levels < keep_levels only
                recon = tokenizer.decode(refiner.refine(z_hat, ref_states, ref_mask, generator=gens))
            elif finest_bits is None:
                recon = tokenizer.decode(sampled.latent)  # z_hat, summed by generate as it sampled
            else:
                recon = decode_keeping(tokenizer, sampled, finest_bits)
            for i, item in enumerate(chunk):
                if two_objects:
                    verdicts = pair_verdict(video_to_uint8(recon[i].clamp(-1, 1)), item["caption"])
                    for attribute, ok in zip(PAIR_JUDGED, verdicts):
                        right[keep][attribute].append(ok)
                    continue
                for attribute, ok in judged_right(recon[i].clamp(-1, 1), item).items():
                    right[keep][attribute].append(ok)
                fill = judge_video(video_to_uint8(recon[i].clamp(-1, 1)))["fill_ratio"]
                right[keep]["fill_ratio"].append(np.nan if fill is None else fill)
    return {keep: {a: float(np.nanmean(v) if a == "fill_ratio" else np.mean(v)) for a, v in got.items()}
            for keep, got in right.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (the one the generator's cache used)")
    parser.add_argument("--generator", required=True, help="generator folder (save_pretrained)")
    parser.add_argument("--variant", default=None, help="generator weights variant, e.g. ema")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=48, help="clips")
    parser.add_argument("--seed", type=int, default=77, help="Shapes seed (not one a token cache used)")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--guidance-schedule", default=None, help=GUIDANCE_SCHEDULE_HELP)
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, > 0")
    parser.add_argument("--finest-decode", choices=FINEST_DECODES, default="sample",
                        help="decode the finest level's drawn bits, or each bit's expected value")
    parser.add_argument("--finest-conv-passes", type=int, default=None,
                        help="passes of a FinestConv that draws in passes (default: the generator's; 1: one pass)")
    parser.add_argument("--refiner", default=None, help="latent refiner folder (generator.train_refiner): refine "
                        "each drawn z_hat from the caption before decoding")
    parser.add_argument("--finest-bits", type=int, default=None,
                        help="decode from the first N bits of each finest token only (drawn bits)")
    parser.add_argument("--shape", choices=SHAPES, default=None,
                        help="only clips of this shape: the first n of the seed that show it (default: every clip)")
    parser.add_argument("--keep", type=int, action="append", default=None, metavar="K",
                        help="measure only with the clip's first K levels kept (repeatable; default: every K)")
    parser.add_argument("--two-objects", action="store_true", help="two-object clips, judged per pair")
    args = parser.parse_args(argv)
    if args.n < 1 or args.size < 16:
        raise ValueError(f"--n must be >= 1 and --size >= 16, got {args.n}, {args.size}")
    if args.two_objects and args.shape is not None:
        raise ValueError(f"--shape {args.shape} picks single-object clips: leave it out with --two-objects")
    temperature_per_level(args.temperature, 1)  # a finite number > 0, checked before any model loads
    schedule = parse_guidance_schedule(args.guidance_schedule)
    tokenizer = PyraTokTokenizer.from_pretrained(args.tokenizer).eval()
    model = PyraTokGenerator.from_pretrained(args.generator, variant=args.variant).eval()
    pool = ShapesDataset(split="train", num_frames=17, height=args.size, width=args.size, seed=args.seed,
                         length=args.n if args.shape is None else 20 * args.n,
                         num_objects=2 if args.two_objects else 1)
    chosen = [i for i in range(len(pool)) if args.shape in (None, pool.plan(i)[0][0].shape)][:args.n]
    items = [pool[i] for i in chosen]
    result = judge_prefixes(tokenizer, model, TextEncoder.from_pretrained(), items, args.guidance_scale, schedule,
                            temperature=args.temperature, finest_decode=args.finest_decode,
                            finest_bits=args.finest_bits, finest_conv_passes=args.finest_conv_passes,
                            refiner=None if args.refiner is None else LatentRefiner.from_pretrained(args.refiner).eval(),
                            keeps=args.keep, two_objects=args.two_objects)
    of_shape = f" of {args.shape}s" if args.shape else ""
    kind = "two-object" if args.two_objects else "single-object"
    print(f"{args.generator}: {len(items)} {kind} train Shapes clips{of_shape}, 17x{args.size}x{args.size}, "
          f"seed {args.seed}, guidance {args.guidance_schedule or args.guidance_scale}, temperature {args.temperature}, "
          f"finest level decoded from its {'expected' if args.finest_decode == 'expected' else 'drawn'} bits"
          + (f", its first {args.finest_bits} only" if args.finest_bits is not None else "")
          + (f", refined by {args.refiner}" if args.refiner is not None else ""))
    for keep, got in result.items():
        scores = ", ".join(f"{a} {v:.3f}" for a, v in got.items())
        print(f"levels 0..{keep - 1} from the clip, the rest sampled: {scores}" if keep else
              f"all levels sampled: {scores}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
