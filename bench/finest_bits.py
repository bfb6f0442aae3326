"""What a tokenizer keeps when only the first bits of each finest-level token are generated.

    python bench/finest_bits.py --tokenizer DIR [--size 64] [--n 64] [--seed 77]

Encodes `n` fresh single-object Shapes train clips with their captions (as the token cache does),
zeroes the finest level's later bit groups (their share of the dequantized sum vanishes), decodes, and
prints PSNR and the judged colour / shape (SHAPES.md's check) per number of bits kept.
Refined groups (`refine_groups`) code successively smaller residuals, so the first groups carry the layout.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pyratok.data.shapes import ShapesDataset  # noqa: E402
from pyratok.evaluate import judged_right  # noqa: E402
from pyratok.losses import psnr  # noqa: E402
from pyratok.text_encoder import TextEncoder  # noqa: E402
from pyratok.tokenizer import PyraTokTokenizer  # noqa: E402


@torch.no_grad()
def decode_keeping(tokenizer, pyramid, keep: int) -> torch.Tensor:
    """Decoded clips with only the first `keep` bits of each finest-level token (the rest zero)."""
    bits = [b.clone() for b in pyramid.bits]
    bits[-1][..., keep:] = 0
    return tokenizer.decode_latent(tokenizer.quantizer.reconstruct(bits, pyramid.latent_grid)).clamp(-1, 1)


@torch.no_grad()
def measure(tokenizer, text_encoder, items: list[dict], batch_size: int = 8) -> dict[int, dict]:
    """{bits kept: {"psnr", "colour", "shape"}} over `items`, for every whole number of bit groups; 0 keeps none,
    what the coarser levels give alone (the floor of the finest level's sampling step)."""
    group, num_bits = tokenizer.quantizer.config.bits_per_group, tokenizer.quantizer.config.num_bits
    scores = {keep: {"psnr": [], "colour": [], "shape": []} for keep in range(num_bits, -1, -group)}
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        video = torch.stack([x["video"] for x in chunk])
        text = text_encoder([x["caption"] for x in chunk])
        pyramid = tokenizer.encode(video, text.hidden_states, text.attention_mask)
        for keep, got in scores.items():
            recon = decode_keeping(tokenizer, pyramid, keep)
            for i, item in enumerate(chunk):
                got["psnr"].append(float(psnr(recon[i:i + 1], video[i:i + 1])))
                right = judged_right(recon[i], item)
                got["colour"].append(right["colour"])
                got["shape"].append(right["shape"])
    return {keep: {k: float(np.mean(v)) for k, v in got.items()} for keep, got in scores.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=64, help="clips")
    parser.add_argument("--seed", type=int, default=77, help="Shapes seed (not one training used)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.size < 16:
        raise ValueError(f"--n must be >= 1 and --size >= 16, got {args.n}, {args.size}")
    tokenizer = PyraTokTokenizer.from_pretrained(args.tokenizer).eval()
    data = ShapesDataset(split="train", num_frames=17, height=args.size, width=args.size, length=args.n,
                         seed=args.seed)
    result = measure(tokenizer, TextEncoder.from_pretrained(), [data[i] for i in range(args.n)])
    print(f"{args.tokenizer}: {args.n} train Shapes clips, 17x{args.size}x{args.size}, seed {args.seed}")
    for keep, got in result.items():
        print(f"finest level, first {keep:2d} bits: PSNR {got['psnr']:.2f} dB, colour {got['colour']:.3f}, "
              f"shape {got['shape']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
