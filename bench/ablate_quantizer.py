"""Ablation of the quantizer alone: LaPQ's pyramid against a single-scale binary quantizer on one frozen backbone.

A trained tokenizer's encoder (or a parent VAE's, `--config` with `train.pretrained_vae`) turns
Shapes and real clips into latents and taps once; a fresh
quantizer of each kind (equal bits per video, equal steps, no text) learns to quantize them
(latent error + commitment + entropy), and is scored by its latent error, as an SNR against the
latents' variance, and by PSNR through the frozen decoder, on held-out Shapes pairs and the held-out
real clip (carphone); training clips are Shapes and bikes crops:
    python bench/ablate_quantizer.py --tokenizer checkpoints/pyratok-shapes-tiny/vae --steps 1000
    python bench/ablate_quantizer.py --config configs/tokenizer/on_parent.yaml --bits 32 --single-bits 40
Unlike bench/ablate_pyramid.py no encoder or decoder adapts to the quantizer, so the figures
compare the quantizers themselves, in minutes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import torch

from ablate_pyramid import group_size
from pyratok.config import load_config
from pyratok.evaluate import build_eval_data
from pyratok.fit_quantizer import encode_clips, fit_quantizer
from pyratok.lapq import LaPQ, LaPQConfig
from pyratok.losses import psnr
from pyratok.tokenizer import PyraTokTokenizer
from pyratok.train import TokenizerTrainConfig, build_objective


def encode_set(tokenizer: PyraTokTokenizer, kind: str, num_clips: int, size: int, seed: int):
    """(latents, taps, videos) of `num_clips` clips of 9 x size x size from the evaluation set `kind`."""
    return encode_clips(tokenizer, build_eval_data(kind, num_clips, 9, size, seed=seed), num_clips)


@torch.no_grad()
def score(tokenizer: PyraTokTokenizer, quantizer: LaPQ, z, taps, video) -> dict:
    out = quantizer(z, taps, *tokenizer.text_inputs(z.shape[0]))  # uncaptioned, where the quantizer reads text
    error = (out.latent - z).pow(2).mean()
    recon = tokenizer.decode_latent(out.latent).clamp(-1, 1)
    return {"latent_snr_db": float(10 * torch.log10(z.var() / error)), "psnr": float(psnr(recon, video)),
            "bits_per_video": sum(math.prod(b.shape[1:]) for b in out.pyramid.bits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokenizer", help="a saved PyraTokTokenizer folder: its backbone is frozen")
    source.add_argument("--config", help="a tokenizer config with train.pretrained_vae (e.g. on_parent.yaml): "
                        "its frozen parent VAE is the backbone")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--bits", type=int, default=16, help="bits per token of LaPQ")
    parser.add_argument("--single-bits", type=int, default=20, help="bits per token of the single-scale quantizer")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-clips", type=int, default=384, help="half Shapes, half real training crops")
    parser.add_argument("--eval-clips", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", default="runs/ablate_quantizer")
    args = parser.parse_args()
    if args.tokenizer:
        tokenizer = PyraTokTokenizer.from_pretrained(args.tokenizer)
    else:
        cfg = load_config(TokenizerTrainConfig, args.config)
        if not cfg.train.pretrained_vae:
            raise ValueError(f"{args.config} sets no train.pretrained_vae to take the frozen backbone from")
        tokenizer = build_objective(cfg).tokenizer
    tokenizer = tokenizer.eval().requires_grad_(False)
    half = args.train_clips // 2
    parts = [encode_set(tokenizer, kind, half, args.size, seed) for kind, seed in (("shapes", 1), ("train-real", 2))]
    train_z = torch.cat([p[0] for p in parts])
    train_taps = [torch.cat(level) for level in zip(*(p[1] for p in parts))]
    evals = {kind: encode_set(tokenizer, kind, args.eval_clips, args.size, seed=777) for kind in ("heldout", "heldout-real")}
    base = dataclasses.asdict(tokenizer.quantizer.config)
    variants = {
        "lapq": {"num_bits": args.bits, "bits_per_group": group_size(args.bits)},
        "single_scale": {"num_bits": args.single_bits, "bits_per_group": group_size(args.single_bits),
                         "level_strides": [(1, 1, 1)]},
    }
    results = {"unquantized_psnr": {k: float(psnr(tokenizer.decode_latent(z).clamp(-1, 1), v))
                                    for k, (z, _, v) in evals.items()}}
    rows = list(variants)
    if args.tokenizer:  # a parent VAE's backbone comes with an untrained quantizer: nothing to score
        results["own_quantizer"] = {k: score(tokenizer, tokenizer.quantizer, *data) for k, data in evals.items()}
        rows.insert(0, "own_quantizer")
    for name, override in variants.items():
        config = LaPQConfig(**{**base, "use_text": False, "whiten_bits": False, **override})
        quantizer = fit_quantizer(LaPQ(config), train_z, train_taps, args.steps, args.lr, args.batch_size, seed=0)
        results[name] = {kind: score(tokenizer, quantizer, *data) for kind, data in evals.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'quantizer':<14}{'bits/video':>11}{'latent SNR heldout/real':>25}{'PSNR heldout/real':>20}")
    for name in rows:
        r = results[name]
        print(f"{name:<14}{r['heldout-real']['bits_per_video']:>11}"
              f"{r['heldout']['latent_snr_db']:>15.2f} / {r['heldout-real']['latent_snr_db']:.2f}"
              f"{r['heldout']['psnr']:>13.2f} / {r['heldout-real']['psnr']:.2f}")
    c = results["unquantized_psnr"]
    print(f"unquantized latents through the same decoder: {c['heldout']:.2f} / {c['heldout-real']:.2f} dB")


if __name__ == "__main__":
    main()
