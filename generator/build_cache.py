"""Build the generator's token cache from a trained tokenizer and captioned clips, once.

Runs the tokenizer's encoder and the text encoder over Shapes (or a folder of captioned videos)
and stores token pyramids plus text states as safetensors shards (DESIGN.md "Generator"):
    python -m generator.build_cache --tokenizer runs/tokenizer-tiny/tokenizer --out runs/token_cache/tiny --n 4000
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pyratok.data.folder import VideoTextDataset
from pyratok.data.shapes import ShapesDataset
from pyratok.text_encoder import TextEncoder
from pyratok.tokenizer import PyraTokTokenizer

from .token_cache import build_token_cache


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a saved PyraTokTokenizer folder")
    parser.add_argument("--out", required=True, help="cache folder to write")
    parser.add_argument("--n", type=int, default=4000, help="number of Shapes clips")
    parser.add_argument("--folder", default=None, help="a folder of captioned videos instead of Shapes")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num-frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--text-encoder", default=None, help="local text encoder folder (default: MiniLM)")
    args = parser.parse_args(argv)
    if Path(args.out).exists() and any(Path(args.out).iterdir()):
        raise SystemExit(f"{args.out} is not empty: choose a new --out")
    tokenizer = PyraTokTokenizer.from_pretrained(args.tokenizer).eval()
    text_encoder = TextEncoder.from_pretrained(args.text_encoder)
    if args.folder:
        dataset = VideoTextDataset(args.folder, num_frames=args.num_frames, size=args.size, seed=args.seed,
                                   temporal_crop="centre")
    else:
        dataset = ShapesDataset(split=args.split, length=args.n, num_frames=args.num_frames,
                                height=args.size, width=args.size, seed=args.seed)
    with torch.no_grad():
        out = build_token_cache(tokenizer, text_encoder, dataset, args.out, batch_size=args.batch_size)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
