"""A flow refiner's loss on its training cache beside a held-out cache, at fixed noise: underfit or overfit?

    python bench/refiner_fit.py --refiner DIR [--refiner DIR ...] --cache TRAIN_CACHE --heldout-cache CACHE
        [--n 128] [--repeats 3]

For each flow refiner (`generator.train_refiner`, model.mode=flow), the mean `flow_loss` (captions kept) over
the first n clips of each token cache, every clip noised `repeats` times from seeds 0 .. repeats-1, so every
refiner meets the same noise and sigmas. Equal figures: the refiner does not overfit, and a lower loss needs
more capacity or training rather than more clips; a held-out figure above the training one: it overfits.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from generator.refiner import LatentRefiner, flow_loss  # noqa: E402
from generator.token_cache import TokenCacheDataset  # noqa: E402
from pyratok.text_encoder import text_reading  # noqa: E402


@torch.no_grad()
def fit_loss(refiner: LatentRefiner, dataset: TokenCacheDataset, n: int = 128, repeats: int = 3,
             batch_size: int = 16) -> float:
    """Mean flow loss of `refiner` over the first n clips of `dataset`, noised from seeds 0 .. repeats-1."""
    if n < 1 or repeats < 1:
        raise ValueError(f"n and repeats must be >= 1, got {n} and {repeats}")
    quantizer = dataset.load_quantizer("cpu")
    n = min(n, len(dataset))
    batches = [dataset.collate([dataset[i] for i in range(start, min(start + batch_size, n))])
               for start in range(0, n, batch_size)]  # read once, noised `repeats` times
    losses = []
    for seed in range(repeats):
        rng = torch.Generator().manual_seed(seed)
        for batch in batches:
            losses.append(float(flow_loss(refiner, refiner.config, quantizer, batch, rng, text_dropout=0.0)[0]))
    return sum(losses) / len(losses)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refiner", action="append", required=True, help="flow refiner folder (repeatable)")
    parser.add_argument("--cache", required=True, help="the token cache the refiners were trained on")
    parser.add_argument("--heldout-cache", required=True, help="a token cache of clips no refiner saw")
    parser.add_argument("--n", type=int, default=128, help="clips of each cache")
    parser.add_argument("--repeats", type=int, default=3, help="noise draws per clip")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1:
        raise ValueError(f"--n and --repeats must be >= 1, got {args.n} and {args.repeats}")
    caches = {"training": args.cache, "held-out": args.heldout_cache}
    for folder in args.refiner:
        refiner = LatentRefiner.from_pretrained(folder).eval()
        reading = text_reading(refiner.config)  # the caption as the refiner reads it
        got = {name: fit_loss(refiner, TokenCacheDataset(cache, phrase_tokens=reading["phrases"],
                                                         word_tokens=reading["words"]), args.n, args.repeats)
               for name, cache in caches.items()}
        print(f"{folder}: flow loss " + ", ".join(f"{name} {loss:.4f}" for name, loss in got.items())
              + f" ({args.n} clips each, {args.repeats} noise draws)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
