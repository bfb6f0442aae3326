"""Evaluate a trained tokenizer: reconstruction PSNR/SSIM and codebook utilization per level.

Implements the reconstruction and "up to 95% codebook utilization" measurements of PyraTok §5:
    python -m pyratok.evaluate --checkpoint runs/tokenizer-tiny/tokenizer --data real
Utilization is the share of each bit-group's 2^(K/G) codes used, pooled over the evaluation set.
On Shapes clips, the reconstructions are also judged as generated videos are (SHAPES.md's prompt-faithfulness
check: colour, shape, motion): what the tokenizer keeps of a clip bounds what a generator on its tokens can show.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data.real_clips import RealClipDataset
from .data.shapes import ShapesDataset, video_to_uint8
from .data.shapes_judge import judge_video
from .losses import psnr, ssim
from .quant_losses import code_counts, counts_to_stats
from .text_encoder import TextEncoder
from .tokenizer import PyraTokTokenizer
from .visualize import save_recon_grid


def build_eval_data(kind: str, num_clips: int, num_frames: int, size: int, seed: int):
    if kind == "real":
        return RealClipDataset(num_frames=num_frames, size=size, length=num_clips, seed=seed)
    if kind in ("shapes", "heldout"):
        split = "train" if kind == "shapes" else "heldout"
        return ShapesDataset(split=split, num_frames=num_frames, height=size, width=size, length=num_clips, seed=seed)
    raise ValueError(f"--data must be 'real', 'shapes' or 'heldout', got {kind!r}")


JUDGED = ("colour", "shape", "motion")


@torch.no_grad()
def evaluate(
    model: PyraTokTokenizer, dataset, batch_size: int = 2, image_path: Path | None = None, text_encoder=None
) -> dict:
    """PSNR/SSIM per clip (averaged) and utilization/perplexity per level over the whole set.

    text_encoder: encode each clip with its caption (as the generator's token cache does); None: uncaptioned.
    """
    model.eval()
    group = model.quantizer.config.bits_per_group
    counts: list[torch.Tensor] | None = None
    psnrs, ssims, judged = [], [], {a: [] for a in JUDGED}
    for start in tqdm(range(0, len(dataset), batch_size), desc="evaluate"):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        video = torch.stack([item["video"] for item in items]).to(model.device)
        if text_encoder is not None:
            text = text_encoder([item["caption"] for item in items])
            pyramid = model.encode(video, text.hidden_states.to(model.device), text.attention_mask.to(model.device))
        else:
            pyramid = model.encode(video)
        recon = model.decode(pyramid).clamp(-1, 1)
        for item, v, r in zip(items, video, recon):
            psnrs.append(float(psnr(r[None], v[None])))
            ssims.append(float(ssim(r[None], v[None])))
            if "colour" in item:  # a Shapes clip: judge the reconstruction against its labels
                verdict = judge_video(video_to_uint8(r))
                for a in JUDGED:
                    judged[a].append(verdict[a] == item[a])
        level_counts = [code_counts(b, group) for b in pyramid.bits]
        counts = level_counts if counts is None else [a + b for a, b in zip(counts, level_counts)]
        if start == 0 and image_path is not None:
            save_recon_grid(video, recon, image_path)
    levels = {f"level{l}": counts_to_stats(c) for l, c in enumerate(counts)}
    faithful = {f"{a}_acc": sum(v) / len(v) for a, v in judged.items() if v}
    return {
        **({"reconstruction_faithfulness": faithful} if faithful else {}),
        "clips": len(psnrs),
        "psnr": sum(psnrs) / len(psnrs),
        "ssim": sum(ssims) / len(ssims),
        "levels": levels,
        "grids": [list(g) for g in pyramid.grids],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a saved tokenizer folder (save_pretrained)")
    parser.add_argument("--data", default="real", help="real | shapes | heldout")
    parser.add_argument("--num-clips", type=int, default=32)
    parser.add_argument("--num-frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234, help="clip sampling seed (not used in training)")
    parser.add_argument("--out", default=None, help="folder for metrics.json and a reconstruction PNG")
    parser.add_argument("--captioned", action="store_true",
                        help="encode each clip with its caption, as the generator's token cache does")
    args = parser.parse_args(argv)
    model = PyraTokTokenizer.from_pretrained(args.checkpoint)
    data = build_eval_data(args.data, args.num_clips, args.num_frames, args.size, args.seed)
    out = Path(args.out) if args.out else Path(args.checkpoint) / f"eval_{args.data}_{args.size}"
    text_encoder = TextEncoder.from_pretrained(None, device=model.device) if args.captioned else None
    result = evaluate(model, data, args.batch_size, out / "reconstruction.png", text_encoder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(f"{args.data} {args.num_frames}x{args.size}x{args.size}, {result['clips']} clips: "
          f"PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}")
    if "reconstruction_faithfulness" in result:
        print("  reconstructions judged as generated videos are: " + ", ".join(
            f"{k} {v:.1%}" for k, v in result["reconstruction_faithfulness"].items()))
    for name, s in result["levels"].items():
        enough = "" if s["tokens_per_code"] >= 10 else "  (fewer than 10 tokens per code: add clips)"
        print(f"  {name}: utilization {s['utilization']:.1%}, perplexity/codes {s['perplexity']:.3f}, "
              f"{s['tokens_per_code']:.1f} tokens per code{enough}")
    print(f"wrote {out / 'metrics.json'}")


if __name__ == "__main__":
    main()
