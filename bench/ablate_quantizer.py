"""Ablation of the quantizer alone: LaPQ's pyramid against a single-scale binary quantizer on one frozen backbone.

A trained tokenizer's encoder turns Shapes and real clips into latents and taps once; a fresh
quantizer of each kind (equal bits per video, equal steps, no text) learns to quantize them
(latent error + commitment + entropy), and is scored by its latent error, as an SNR against the
latents' variance, and by PSNR through the frozen decoder, on held-out Shapes and real clips:
    python bench/ablate_quantizer.py --tokenizer checkpoints/pyratok-shapes-tiny/vae --steps 1000
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
from tqdm import tqdm

from ablate_pyramid import group_size
from pyratok.evaluate import build_eval_data
from pyratok.lapq import LaPQ, LaPQConfig
from pyratok.losses import psnr
from pyratok.objective import LossWeights, quantizer_loss
from pyratok.tokenizer import PyraTokTokenizer


@torch.no_grad()
def encode_set(tokenizer: PyraTokTokenizer, kind: str, num_clips: int, size: int, seed: int):
    """(latents (n, c, t, h, w), taps [(n, c_i, t_i, h_i, w_i)], videos (n, 3, T, H, W)) of one clip set."""
    dataset = build_eval_data(kind, num_clips, 9, size, seed=seed)
    zs, taps, videos = [], [], []
    for start in range(0, num_clips, 8):
        video = torch.stack([dataset[i]["video"] for i in range(start, min(start + 8, num_clips))])
        z, _, tap = tokenizer.encode_latent(video)
        zs.append(z)
        taps.append(tap)
        videos.append(video)
    return torch.cat(zs), [torch.cat(level) for level in zip(*taps)], torch.cat(videos)


def train_quantizer(config: LaPQConfig, z: torch.Tensor, taps: list[torch.Tensor], steps: int, seed: int) -> LaPQ:
    quantizer = LaPQ(config).train()
    optimizer = torch.optim.AdamW(quantizer.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, 2 * (1 - s / steps)))  # flat, then linear to 0
    weights, g = LossWeights(), torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc=f"train {config.num_bits}-bit, {config.num_levels} level(s)"):
        idx = torch.randint(0, z.shape[0], (16,), generator=g)
        loss = quantizer_loss(quantizer(z[idx], [t[idx] for t in taps]), weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return quantizer.eval()


@torch.no_grad()
def score(tokenizer: PyraTokTokenizer, quantizer: LaPQ, z, taps, video) -> dict:
    out = quantizer(z, taps, *tokenizer.text_inputs(z.shape[0]))  # uncaptioned, where the quantizer reads text
    error = (out.latent - z).pow(2).mean()
    recon = tokenizer.decode_latent(out.latent).clamp(-1, 1)
    return {"latent_snr_db": float(10 * torch.log10(z.var() / error)), "psnr": float(psnr(recon, video)),
            "bits_per_video": sum(math.prod(b.shape[1:]) for b in out.pyramid.bits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a saved PyraTokTokenizer folder: its backbone is frozen")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--bits", type=int, default=16, help="bits per token of LaPQ")
    parser.add_argument("--single-bits", type=int, default=20, help="bits per token of the single-scale quantizer")
    parser.add_argument("--train-clips", type=int, default=384, help="half Shapes, half real")
    parser.add_argument("--eval-clips", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", default="runs/ablate_quantizer")
    args = parser.parse_args()
    tokenizer = PyraTokTokenizer.from_pretrained(args.tokenizer).eval().requires_grad_(False)
    half = args.train_clips // 2
    parts = [encode_set(tokenizer, kind, half, args.size, seed) for kind, seed in (("shapes", 1), ("real", 2))]
    train_z = torch.cat([p[0] for p in parts])
    train_taps = [torch.cat(level) for level in zip(*(p[1] for p in parts))]
    evals = {kind: encode_set(tokenizer, kind, args.eval_clips, args.size, seed=777) for kind in ("heldout", "real")}
    base = dataclasses.asdict(tokenizer.quantizer.config)
    variants = {
        "lapq": {"num_bits": args.bits, "bits_per_group": group_size(args.bits)},
        "single_scale": {"num_bits": args.single_bits, "bits_per_group": group_size(args.single_bits),
                         "level_strides": [(1, 1, 1)]},
    }
    results = {"unquantized_psnr": {k: float(psnr(tokenizer.decode_latent(z).clamp(-1, 1), v))
                                    for k, (z, _, v) in evals.items()},
               "own_quantizer": {k: score(tokenizer, tokenizer.quantizer, *data) for k, data in evals.items()}}
    for name, override in variants.items():
        config = LaPQConfig(**{**base, "use_text": False, "whiten_bits": False, **override})
        quantizer = train_quantizer(config, train_z, train_taps, args.steps, seed=0)
        results[name] = {kind: score(tokenizer, quantizer, *data) for kind, data in evals.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'quantizer':<14}{'bits/video':>11}{'latent SNR heldout/real':>25}{'PSNR heldout/real':>20}")
    for name in ("own_quantizer", *variants):
        r = results[name]
        print(f"{name:<14}{r['real']['bits_per_video']:>11}"
              f"{r['heldout']['latent_snr_db']:>15.2f} / {r['real']['latent_snr_db']:.2f}"
              f"{r['heldout']['psnr']:>13.2f} / {r['real']['psnr']:.2f}")
    c = results["unquantized_psnr"]
    print(f"unquantized latents through the same decoder: {c['heldout']:.2f} / {c['real']:.2f} dB "
          "(the decoder was trained on its own quantizer's latents)")


if __name__ == "__main__":
    main()
