"""Where a tokenizer's own next-scale prior (the model of its `loss.ar` term) can predict its tokens.

    python bench/prior_regions.py --cache DIR --tokenizer DIR [--tokenizer DIR ...] [--n 64]

The first `n` single-object Shapes clips a token cache was built from (`generator.build_cache`; its
tokens are not read, only its clips and captions) are encoded by each tokenizer with their captions, and
the tokenizer's prior is scored teacher-forced on the bits: nats per bit per level, and at the finest
level per bit group at background, boundary and interior tokens (`word_reliance.token_regions`). The AR
term pulls the tokens towards what this prior predicts, so where it stays near a coin (ln 2 = 0.693) the
term gives the tokens no direction.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from word_reliance import REGIONS, cache_clips, region_losses, shapes_captions, token_regions  # noqa: E402

from pyratok import PyraTokTokenizer  # noqa: E402
from pyratok.text_encoder import TextEncoder  # noqa: E402


@torch.no_grad()
def prior_logits(tokenizer: PyraTokTokenizer, video: torch.Tensor, text) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per level, the prior's bit logits and the clip's bits (b, t, h, w, k), encoded with the caption."""
    z, _, taps = tokenizer.encode_latent(video.to(tokenizer.device, tokenizer.dtype))
    states, mask = tokenizer.text_inputs(z.shape[0], text.hidden_states.to(tokenizer.device),
                                         text.attention_mask.to(tokenizer.device))
    pyramid = tokenizer.quantizer(z, taps, states, mask).pyramid
    bits = list(pyramid.bits)
    inputs = tokenizer.quantizer.level_inputs(bits, pyramid.latent_grid)
    return tokenizer.prior(inputs, states, mask), bits


def group_means(per_bit: torch.Tensor, group: int) -> torch.Tensor:
    """(k,) nats per bit -> (k / group,) the mean of each bit group."""
    return per_bit.reshape(-1, group).mean(-1)


def measure(tokenizer: PyraTokTokenizer, cache: Path, n: int, encoder, batch_size: int = 8) -> dict:
    """levels: nats per bit per level; regions: {name: (groups,)} at the finest level; tokens per region."""
    if tokenizer.prior is None:
        raise ValueError("the tokenizer has no prior (prior_config depth 0): nothing to score")
    rows, captions = shapes_captions(cache, n)
    if not rows:
        raise ValueError(f"{cache} holds no single-object Shapes clips")
    clips = cache_clips(cache)
    level_sums, region_sums, counts = None, {}, {}
    for start in range(0, len(rows), batch_size):
        batch_rows = rows[start : start + batch_size]
        video = torch.stack([clips[i]["video"] for i in batch_rows])
        logits, bits = prior_logits(tokenizer, video, encoder(captions[start : start + batch_size]))
        sums = torch.stack([F.binary_cross_entropy_with_logits(lg.float(), (b.float() + 1) / 2, reduction="sum")
                            for lg, b in zip(logits, bits)])
        level_sums = sums if level_sums is None else level_sums + sums
        regions = token_regions(cache, batch_rows, bits[-1].shape[1:4])
        for name, nats in region_losses(logits[-1].float(), bits[-1], regions).items():
            tokens = int((regions == REGIONS.index(name)).sum())
            region_sums[name] = region_sums.get(name, 0) + nats * tokens
            counts[name] = counts.get(name, 0) + tokens
    numels = torch.tensor([b[0].numel() * len(rows) for b in bits], dtype=torch.float)
    group = tokenizer.quantizer.config.bits_per_group
    return {"levels": level_sums / numels, "tokens": counts,
            "regions": {name: group_means(s / counts[name], group) for name, s in region_sums.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True, help="token cache built from Shapes (its clips)")
    parser.add_argument("--tokenizer", type=Path, action="append", required=True, help="tokenizer folder (repeatable)")
    parser.add_argument("--n", type=int, default=64, help="single-object clips")
    args = parser.parse_args(argv)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    encoder = TextEncoder.from_pretrained(None)
    for folder in args.tokenizer:
        result = measure(PyraTokTokenizer.from_pretrained(folder).eval(), args.cache, args.n, encoder)
        print(f"{folder}: prior, nats per bit, levels coarse to fine "
              + " / ".join(f"{v:.3f}" for v in result["levels"]))
        for name, groups in result["regions"].items():
            print(f"  {name:10s} {result['tokens'][name]:7d} tokens   " + " / ".join(f"{v:.3f}" for v in groups))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
