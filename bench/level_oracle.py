"""Which level of the token pyramid a generator loses a prompt's colour, shape or motion at.

    python bench/level_oracle.py --tokenizer DIR --generator DIR [--size 64] [--n 48] [--seed 77]
        [--temperature 1.0] [--finest-decode sample|expected]

Encodes `n` fresh single-object Shapes train clips (seed 77: no token cache is built from it) with their
captions, then for k = 0 .. L keeps the clip's own first k levels (`generate(prefix_bits=...)`) and lets
the generator sample the rest from the caption, decodes and judges the video as SHAPES.md does.
k = 0 is plain generation, k = L the tokenizer's reconstruction. The level after which an attribute
jumps is the one the generator fails to draw it at.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from generator import PyraTokGenerator  # noqa: E402
from generator.sampling import FINEST_DECODES, temperature_per_level  # noqa: E402
from pyratok.data.shapes import ShapesDataset  # noqa: E402
from pyratok.evaluate import JUDGED, judged_right  # noqa: E402
from pyratok.text_encoder import TextEncoder  # noqa: E402
from pyratok.tokenizer import PyraTokTokenizer  # noqa: E402


@torch.no_grad()
def judge_prefixes(tokenizer, model, text_encoder, items: list[dict], guidance_scale: float = 3.0,
                   seed: int = 0, batch_size: int = 8, temperature: float = 1.0,
                   finest_decode: str = "sample") -> dict[int, dict[str, float]]:
    """{levels kept: {attribute: share judged right}} for every number of kept levels 0 .. L; the
    sampled levels are drawn at `temperature`, the finest one decoded as `finest_decode` says
    (`generator.sampling.generate`)."""
    num_levels = model.config.num_levels
    levels = len(tokenizer.quantizer.config.level_strides)
    if levels != num_levels:
        raise ValueError(f"the tokenizer has {levels} levels, the generator {num_levels}")
    right = {k: {a: [] for a in JUDGED} for k in range(num_levels + 1)}
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        video = torch.stack([x["video"] for x in chunk])
        text = text_encoder([x["caption"] for x in chunk])
        pyramid = tokenizer.encode(video, text.hidden_states, text.attention_mask)
        for keep in range(num_levels + 1):
            gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
            sampled = model.generate(tokenizer.quantizer, text.hidden_states, text.attention_mask,
                                     pyramid.latent_grid, guidance_scale=guidance_scale, generator=gens,
                                     temperature=temperature, finest_decode=finest_decode,
                                     prefix_bits=pyramid.bits[:keep])
            recon = tokenizer.decode(sampled.latent)  # z_hat, summed by generate as it sampled
            for i, item in enumerate(chunk):
                for attribute, ok in judged_right(recon[i].clamp(-1, 1), item).items():
                    right[keep][attribute].append(ok)
    return {keep: {a: float(np.mean(v)) for a, v in got.items()} for keep, got in right.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (the one the generator's cache used)")
    parser.add_argument("--generator", required=True, help="generator folder (save_pretrained)")
    parser.add_argument("--variant", default=None, help="generator weights variant, e.g. ema")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=48, help="clips")
    parser.add_argument("--seed", type=int, default=77, help="Shapes seed (not one a token cache used)")
    parser.add_argument("--guidance-scale", type=float, default=3.0)
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, > 0")
    parser.add_argument("--finest-decode", choices=FINEST_DECODES, default="sample",
                        help="decode the finest level's drawn bits, or each bit's expected value")
    args = parser.parse_args(argv)
    if args.n < 1 or args.size < 16:
        raise ValueError(f"--n must be >= 1 and --size >= 16, got {args.n}, {args.size}")
    temperature_per_level(args.temperature, 1)  # a finite number > 0, checked before any model loads
    tokenizer = PyraTokTokenizer.from_pretrained(args.tokenizer).eval()
    model = PyraTokGenerator.from_pretrained(args.generator, variant=args.variant).eval()
    data = ShapesDataset(split="train", num_frames=17, height=args.size, width=args.size, length=args.n,
                         seed=args.seed)  # one object per clip
    items = [data[i] for i in range(len(data))]
    result = judge_prefixes(tokenizer, model, TextEncoder.from_pretrained(), items, args.guidance_scale,
                            temperature=args.temperature, finest_decode=args.finest_decode)
    print(f"{args.generator}: {len(items)} single-object train Shapes clips, 17x{args.size}x{args.size}, "
          f"seed {args.seed}, guidance {args.guidance_scale}, temperature {args.temperature}, "
          f"finest level decoded from its {'expected' if args.finest_decode == 'expected' else 'drawn'} bits")
    for keep, got in result.items():
        scores = ", ".join(f"{a} {v:.3f}" for a, v in got.items())
        print(f"levels 0..{keep - 1} from the clip, the rest sampled: {scores}" if keep else
              f"all levels sampled: {scores}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
