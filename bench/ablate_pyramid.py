"""Ablation: LaPQ's pyramid against a single-scale binary quantizer, equal bits and equal steps.

Both tokenizers share the backbone config, data, seed and step count; the single-scale one
quantizes only the finest grid with more bits per token so that it gets at least as many bits
per video. PSNR on held-out Shapes pairs and on the held-out real clip (carphone), in one run:
    python bench/ablate_pyramid.py --steps 300 [--out runs/ablate] [--set model.quantizer.whiten_bits=true]
    python bench/ablate_pyramid.py --config configs/tokenizer/wan2.1.yaml --pretrained-vae WAN_DIR --steps N
Both may start from one trained autoencoder (`--pretrained-vae DIR`, a diffusers AutoencoderKLWan
folder), which isolates the quantizer and lets short runs compare converged reconstructions.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from pyratok.config import load_config
from pyratok.evaluate import build_eval_data, evaluate
from pyratok.tokenizer import PyraTokTokenizer
from pyratok.train import TokenizerTrainConfig, train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tokenizer" / "tiny.yaml"


def bits_per_video(model: PyraTokTokenizer, frames: int, size: int) -> int:
    grids = model.token_grids(frames, size, size)
    return sum(math.prod(g) for g in grids) * model.quantizer.config.num_bits


def group_size(num_bits: int) -> int:
    """The largest group of at most 12 bits (the entropy loss's 2^group codes) that divides num_bits."""
    return max(g for g in range(1, 13) if num_bits % g == 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIG), help="tokenizer config of both variants (e.g. wan2.1.yaml)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="runs/ablate_pyramid")
    parser.add_argument("--eval-clips", type=int, default=16)
    parser.add_argument("--single-bits", type=int, default=20, help="bits per token of the single-scale quantizer")
    parser.add_argument("--pretrained-vae", default=None, help="start both from this AutoencoderKLWan folder")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides for both variants, e.g. model.quantizer.whiten_bits=true")
    parser.add_argument("--vae-steps", type=int, default=None,
                        help="autoencoder warm-up steps (default: 0 with --pretrained-vae, else the config's)")
    args = parser.parse_args()
    out = Path(args.out)
    common = [f"train.max_steps={args.steps}", "train.save_every=100000", "train.image_every=100000",
              "train.log_every=25", "loss.ar=0.0", "loss.align=0.0", *args.set]
    if args.pretrained_vae:
        common.append(f"train.pretrained_vae={args.pretrained_vae}")
    vae_steps = args.vae_steps if args.vae_steps is not None else 0 if args.pretrained_vae else None
    if vae_steps is not None:
        common.append(f"train.vae_steps={vae_steps}")
    variants = {
        "lapq": [],
        "single_scale": ["model.quantizer.level_strides=[[1,1,1]]", f"model.quantizer.num_bits={args.single_bits}",
                         f"model.quantizer.bits_per_group={group_size(args.single_bits)}"],
    }
    results = {}
    for name, extra in variants.items():
        cfg = load_config(TokenizerTrainConfig, args.config, common + extra + [f"train.output_dir={out / name}"])
        if cfg.train.vae_steps >= cfg.train.max_steps:
            raise ValueError(f"--steps {args.steps} leaves no quantized steps after {cfg.train.vae_steps} warm-up steps")
        folder = out / name / "tokenizer"
        if not (folder / "config.json").is_file():
            train(cfg)
        model = PyraTokTokenizer.from_pretrained(folder)
        size, frames = cfg.data.height, cfg.data.num_frames
        results[name] = {"bits_per_video": bits_per_video(model, frames, size)}
        for data in ("heldout", "heldout-real"):
            dataset = build_eval_data(data, args.eval_clips, frames, size, seed=777)
            metrics = evaluate(model, dataset, batch_size=4)
            results[name][data] = metrics["psnr"]
            results[name][f"{data}_utilization"] = [round(s["utilization"], 3) for s in metrics["levels"].values()]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'quantizer':<14}{'bits/video':>11}{'heldout PSNR':>14}{'carphone PSNR':>15}")
    for name, r in results.items():
        print(f"{name:<14}{r['bits_per_video']:>11}{r['heldout']:>14.2f}{r['heldout-real']:>15.2f}")
    for data in ("heldout", "heldout-real"):
        gain = results["lapq"][data] - results["single_scale"][data]
        print(f"LaPQ - single scale on {data}: {gain:+.2f} dB (target >= +1 dB)")


if __name__ == "__main__":
    main()
