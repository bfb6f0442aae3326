"""What each of PyraTok's three tokenizer mechanisms does in a trained tokenizer, on held-out clips.

    python bench/mechanisms.py --tokenizer DIR [--ablation DIR_TRAINED_WITHOUT_AR]

- taps at several depths: per tap, bits flipped per level and PSNR when that tap is replaced by its
  per-channel mean over the evaluation set;
- text guidance: on held-out captioned Shapes, PSNR with the true caption, no caption and a wrong
  caption (another clip's), bits flipped, and each level's gate;
- the global AR objective: bits per token under the tokenizer's own next-scale prior (its
  cross-entropy, held-out), beside an ablation trained for equal steps without it.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pyratok.data.natural import clip_paths  # noqa: E402
from pyratok.data.real_clips import RealClipDataset  # noqa: E402
from pyratok.data.shapes import ShapesDataset  # noqa: E402
from pyratok.losses import psnr  # noqa: E402
from pyratok.text_encoder import TextEncoder  # noqa: E402
from pyratok.tokenizer import PyraTokTokenizer  # noqa: E402


def batch_of(dataset, n: int) -> tuple[torch.Tensor, list[str]]:
    items = [dataset[i] for i in range(n)]
    return torch.stack([it["video"] for it in items]), [it["caption"] for it in items]


@torch.no_grad()
def run(model, video, states, mask, taps=None):
    z, _, own_taps = model.encode_latent(video)
    out = model.quantizer(z, own_taps if taps is None else taps, states, mask)
    return out, model.decode(out.pyramid).clamp(-1, 1), own_taps


def flipped(a, b) -> str:
    return " / ".join(f"{float((x != y).float().mean()):.1%}" for x, y in zip(a, b))


@torch.no_grad()
def prior_bits_per_token(model, out, states, mask) -> float:
    """Mean cross-entropy (bits) of the prior's prediction of each level's bits, per token."""
    inputs = model.quantizer.level_inputs(out.pyramid.bits, out.pyramid.latent_grid)
    logits = model.prior(inputs, states, mask)
    total = sum(F.binary_cross_entropy_with_logits(lg, (b > 0).float(), reduction="sum")
                for lg, b in zip(logits, out.pyramid.bits))
    tokens = sum(b[..., 0].numel() for b in out.pyramid.bits)
    return float(total) / tokens / torch.log(torch.tensor(2.0)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a saved tokenizer folder")
    parser.add_argument("--ablation", default=None, help="the same recipe trained without the AR loss (default: none)")
    parser.add_argument("--clips", type=int, default=16, help="held-out clips per set (default: %(default)s)")
    parser.add_argument("--size", type=int, default=64, help="clip height and width (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=9, help="frames per clip (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = PyraTokTokenizer.from_pretrained(args.tokenizer).eval()
    text_encoder = TextEncoder.from_pretrained(None)
    real, _ = batch_of(RealClipDataset(clip_paths("heldout"), num_frames=args.frames, size=args.size,
                                       length=args.clips, seed=4321), args.clips)
    shapes, captions = batch_of(ShapesDataset(split="heldout", num_frames=args.frames, height=args.size,
                                              width=args.size, length=args.clips, seed=4321), args.clips)
    null = model.text_inputs(args.clips)

    print(f"taps (carphone clips, held out from the parent VAE, {args.frames}x{args.size}x{args.size}); "
          "bits flipped per level coarse -> fine")
    base, recon, taps = run(model, real, *null)
    print(f"  all taps: PSNR {float(psnr(recon, real)):.2f} dB")
    for i, tap in enumerate(taps):
        mean = tap.mean(dim=(0, 2, 3, 4), keepdim=True).expand_as(tap)
        out, r, _ = run(model, real, *null, taps=[mean if j == i else t for j, t in enumerate(taps)])
        print(f"  tap {i} ({tap.shape[1]} ch, 1/{real.shape[-1] // tap.shape[-1]} size) -> its mean: "
              f"PSNR {float(psnr(r, real)):.2f} dB, bits flipped {flipped(base.pyramid.bits, out.pyramid.bits)}")

    text = text_encoder(captions)
    states, mask = text.hidden_states, text.attention_mask
    print("text guidance (held-out Shapes pairs, captions never trained on as pairs)")
    gates = [float(a.gate.detach()) for a in model.quantizer.text_attn] if model.quantizer.text_attn is not None else []
    print("  gates per level: " + ", ".join(f"{g:.3f}" for g in gates))
    true, r_true, _ = run(model, shapes, states, mask)
    for name, (s, m) in {"no caption": null, "wrong caption": (states.roll(1, 0), mask.roll(1, 0))}.items():
        out, r, _ = run(model, shapes, s, m)
        print(f"  true caption {float(psnr(r_true, shapes)):.2f} dB vs {name} {float(psnr(r, shapes)):.2f} dB; "
              f"bits flipped {flipped(true.pyramid.bits, out.pyramid.bits)}")

    print("global AR objective: held-out bits per token under the tokenizer's own prior (of K per token)")
    for label, path in (("with AR", args.tokenizer), ("without AR (ablation)", args.ablation)):
        if path is None:
            continue
        m = model if path == args.tokenizer else PyraTokTokenizer.from_pretrained(path).eval()
        for name, video in (("real", real), ("shapes", shapes)):
            out, r, _ = run(m, video, *m.text_inputs(args.clips))
            bpt = prior_bits_per_token(m, out, *m.text_inputs(args.clips))
            print(f"  {label}, {name}: {bpt:.2f} bits/token of {m.quantizer.config.num_bits}, PSNR {float(psnr(r, video)):.2f} dB")


if __name__ == "__main__":
    main()
