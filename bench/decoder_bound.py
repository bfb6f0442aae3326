"""What a pipeline's last stage can give back at best: clips decoded from their quantized z_hat, from their
unquantized latent z, and drawn by a flow refiner from their own coarse levels, judged as SHAPES.md says.

    python bench/decoder_bound.py --tokenizer DIR [--refiner DIR ...] [--two-objects 96] [--squares 48]
        [--size 128] [--seed 77] [--guidance-scale G] [--sheet PATH]

Fresh Shapes train clips (seed 77: no token cache is built from it) are encoded with their captions. Rows:
the clips themselves (the judge's own accuracy), the tokenizer's decoded z_hat (what a refiner of
`target="z_hat"` learns to give back), its decoded z (what a refiner of `target="latent"` learns), and per
`--refiner` the clip's first `keep_levels` levels kept and the rest drawn from the caption (seeded per clip).
Columns: two-object clips with both objects right in colour and shape / also in motion / the squares they name
judged square (per clip, over the clips that name one), and single-object
squares judged square / their mean fill ratio (area over box; the judge's line to circle is 0.8925).
`--sheet PATH` writes the first 4 clips of each kind, one line each: every row's decoding of the clip side by
side (frames 0, 8 and 16 of each, in the order of the rows above).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from generator.refiner import LatentRefiner, check_guidance_scale  # noqa: E402
from pyratok.data.contact_sheet import save_contact_sheet  # noqa: E402
from pyratok.data.shapes import ShapesDataset, video_to_uint8  # noqa: E402
from pyratok.data.shapes_judge import judge_video, score_caption  # noqa: E402
from pyratok.text_encoder import TextEncoder, text_reading  # noqa: E402
from pyratok.tokenizer import PyraTokTokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from level_oracle import pair_scores, read_as  # noqa: E402


def clips(num: int, size: int, seed: int, two_objects: bool) -> list[dict]:
    """`num` two-object clips, or the first `num` single-object clips of the seed that show a square."""
    if two_objects:
        pool = ShapesDataset(split="train", num_frames=17, height=size, width=size, seed=seed, length=num,
                             num_objects=2)
        return [pool[i] for i in range(num)]
    pool = ShapesDataset(split="train", num_frames=17, height=size, width=size, seed=seed, length=20 * num)
    return [pool[i] for i in range(len(pool)) if pool.plan(i)[0][0].shape == "square"][:num]


def verdict(frames: np.ndarray, caption: str, two_objects: bool) -> tuple[float, ...]:
    """Two objects: (both right in colour and shape, also in motion, the share of the squares it names that are
    judged square: nan where it names none); a square: (judged square, fill ratio)."""
    if two_objects:
        scored = score_caption(frames, caption)  # once: both verdicts and the squares come from it
        named = [row for row in scored["objects"] if row["shape"] == "square"]
        squares = np.mean([row["judged"]["shape"] == "square" for row in named]) if named else np.nan
        return (*pair_scores(scored), float(squares))
    judged = judge_video(frames)
    return float(judged["shape"] == "square"), np.nan if judged["fill_ratio"] is None else judged["fill_ratio"]


@torch.no_grad()
def judge_rows(tokenizer, text_encoder, refiners: dict, items: list[dict], two_objects: bool,
               guidance_scale: float | None = None, batch_size: int = 8,
               shown: list | None = None) -> dict[str, list[float]]:
    """{row: [the two column means]} over `items`; rows "clips", "z_hat", "z" and one per named refiner.
    `shown`: a list that receives (label, uint8 frames (3 * rows, H, W, 3)) for each of the first 4 items:
    frames 0, 8 and 16 of every row's decoding, side by side."""
    got = {row: [] for row in ("clips", "z_hat", "z", *refiners)}
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        video, captions = torch.stack([x["video"] for x in chunk]), [x["caption"] for x in chunk]
        text = text_encoder(captions)
        pyramid, z = tokenizer.encode(video, text.hidden_states, text.attention_mask, return_latent=True)
        decoded = {"clips": video, "z_hat": tokenizer.decode(pyramid), "z": tokenizer.decode_latent(z)}
        phrase_readers = any(text_reading(r.config)["phrases"] for r in refiners.values())
        phrases = text_encoder.phrases(captions) if phrase_readers else None  # once for every refiner
        for name, refiner in refiners.items():
            states, mask = read_as(refiner.config, text, phrases)  # the caption as this refiner reads it
            gens = [torch.Generator().manual_seed(start + i) for i in range(len(chunk))]
            drawn = refiner.refine(refiner.condition(pyramid, tokenizer.quantizer), states, mask, generator=gens,
                                   guidance_scale=guidance_scale)
            decoded[name] = tokenizer.decode(drawn)
        frames = {row: [video_to_uint8(v.clamp(-1, 1)) for v in recon] for row, recon in decoded.items()}
        for row, videos in frames.items():
            got[row] += [verdict(f, captions[i], two_objects) for i, f in enumerate(videos)]
        if shown is not None:
            for i in range(max(0, min(len(chunk), 4 - start))):
                side_by_side = np.concatenate([videos[i][::8] for videos in frames.values()])  # (3 * rows, H, W, 3)
                shown.append((f"{captions[i]}: {' | '.join(frames)}", side_by_side))
    return {row: np.nanmean(np.array(v, dtype=float), axis=0).tolist() for row, v in got.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (a pipeline's vae)")
    parser.add_argument("--refiner", action="append", default=[], help="flow refiner folder (repeatable)")
    parser.add_argument("--two-objects", type=int, default=96, help="two-object clips")
    parser.add_argument("--squares", type=int, default=48, help="single-object square clips")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=77, help="Shapes seed (not one a token cache used)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="refiners' guidance (default: config's)")
    parser.add_argument("--sheet", default=None, help="write the first clips of each kind, decoded each way (PNG)")
    args = parser.parse_args(argv)
    if args.two_objects < 0 or args.squares < 0 or args.two_objects + args.squares < 1 or args.size < 16:
        raise ValueError(f"--two-objects and --squares must be >= 0 (not both 0) and --size >= 16, got "
                         f"{args.two_objects}, {args.squares}, {args.size}")
    check_guidance_scale(args.guidance_scale, "--guidance-scale")
    tokenizer = PyraTokTokenizer.from_pretrained(args.tokenizer).eval()
    refiners = {path: LatentRefiner.from_pretrained(path).float().eval() for path in args.refiner}
    if not all(r.draws for r in refiners.values()):
        raise ValueError(f"every --refiner must be a flow refiner (mode 'flow'): {args.refiner}")
    text_encoder = TextEncoder.from_pretrained()
    table, shown = {}, []
    for two_objects, num in ((True, args.two_objects), (False, args.squares)):
        if num:
            table[two_objects] = judge_rows(tokenizer, text_encoder, refiners, clips(num, args.size, args.seed,
                                            two_objects), two_objects, args.guidance_scale, shown=shown)
    if args.sheet:
        print(f"wrote {save_contact_sheet([f for _, f in shown], args.sheet, labels=[t for t, _ in shown])}")
    print(f"{args.tokenizer}: Shapes seed {args.seed}, 17x{args.size}x{args.size}; {args.two_objects} two-object "
          f"clips, {args.squares} squares; refiners' guidance {args.guidance_scale or 'as configured'}")
    print("| decoded from | two objects: colour+shape / with motion / their squares judged square | squares: judged square / fill |")
    print("|---|---|---|")
    for row in ("clips", "z_hat", "z", *refiners):
        cells = [" / ".join(f"{v:.3f}" for v in table[k][row]) if k in table else "-" for k in (True, False)]
        print(f"| {row} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
