"""Can the coarser levels and the caption fix where a shape's edge runs at the finest level? A probe.

    python bench/edge_probe.py --cache DIR --heldout DIR [--steps 3000] [--batch-size 16] [--n 64] [--bits 8]

A small 3D CNN (`generator.finest_conv.FinestConv`, predicting GROUP_BITS bits) reads z_hat_<L, the sum of the clip's
own levels 0..L-2 on the finest grid (what the generator reads at its finest step), plus the mean of the
caption's text states, and predicts the finest level's first bit group. It trains on the token cache
`--cache` (Shapes: the clips are rebuilt from the cache's settings), each token weighted 1 at the
object's boundary and interior and 0.1 in the background (`word_reliance.token_regions`), and reports the
nats per bit it pays on `n` single-object clips of `--heldout`, by region. Set beside the generator's
figure on the same tokens (`bench/word_reliance.py`): a probe that pays less at the boundary shows that
the edge is there to be read. With `--bits 32` it learns all of a finest token's bits, as the generator's
finest head does, and still reports the first group: what predicting the later groups costs the first.
Letters: b - batch, c - latent channels, t/h/w - the finest grid, d - probe width, s - text length.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from generator.finest_conv import FinestConv  # noqa: E402
from generator.objective import teacher_forcing_inputs  # noqa: E402
from generator.token_cache import TokenCacheDataset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from word_reliance import REGIONS, shapes_captions, token_regions  # noqa: E402

GROUP_BITS = 8  # the first group: LaPQ's bits_per_group of the tokenizers shipped here
BACKGROUND_WEIGHT = 0.1


def probe_batch(data: TokenCacheDataset, quantizer, rows: list[int], bits: int = GROUP_BITS):
    """z_hat_<L (b, c, t, h, w), the text (b, s, text_dim) and its mask (b, s), the finest level's first
    `bits` bits (b, t, h, w, bits)."""
    batch = data.collate([data[i] for i in rows])
    if batch["text_states"] is None:
        raise ValueError("the cache holds no text states: built without a text encoder")
    with torch.no_grad():
        z_hat = teacher_forcing_inputs(quantizer, batch["bits"], batch["latent_grid"])[-1]
    return z_hat, (batch["text_states"].float(), batch["text_mask"]), batch["bits"][-1][..., :bits]


def nats(probe: FinestConv, z_hat, text, bits, first: int | None = None) -> torch.Tensor:
    """(b, t, h, w) mean nats per bit of each token's predicted bits (or of its `first` ones); text: (states, mask)."""
    per_bit = F.binary_cross_entropy_with_logits(probe(z_hat, *text), (bits + 1) / 2, reduction="none")
    return per_bit[..., :first].mean(-1)


def train_probe(cache: Path, steps: int, batch_size: int = 16, seed: int = 0, bits: int = GROUP_BITS) -> FinestConv:
    """The probe of a finest token's first `bits` bits after `steps` AdamW steps on random batches of `cache`
    (seeded: the same every run)."""
    data = TokenCacheDataset(cache)
    quantizer = data.load_quantizer("cpu")
    have = quantizer.config.num_bits
    if not GROUP_BITS <= bits <= have:
        raise ValueError(f"--bits must be in [{GROUP_BITS}, {have}] (the finest level's bits), got {bits}")
    grid = tuple(data[0]["latent_grid"])
    regions = torch.cat([token_regions(cache, list(range(s, min(s + 200, len(data)))), grid)
                         for s in range(0, len(data), 200)])  # (N, t, h, w); in chunks: the clips are rebuilt
    weights = torch.where(regions == 0, BACKGROUND_WEIGHT, 1.0)
    z_hat, text, _ = probe_batch(data, quantizer, [0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = FinestConv(z_hat.shape[1], text[0].shape[-1], bits)  # width 64, 4 blocks
    opt = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=0.01)
    order = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="edge probe"):
        rows = torch.randint(len(data), (batch_size,), generator=order)
        w = weights[rows]
        loss = (nats(probe, *probe_batch(data, quantizer, rows.tolist(), bits)) * w).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe.eval()


@torch.no_grad()
def heldout_nats(probe: FinestConv, heldout: Path, n: int) -> dict[str, float]:
    """Mean nats per bit of the first group on each region's tokens of `n` single-object clips of `heldout`."""
    data = TokenCacheDataset(heldout)
    rows, _ = shapes_captions(heldout, n)
    z_hat, text, bits = probe_batch(data, data.load_quantizer("cpu"), rows, probe.out.out_channels)
    per_token = nats(probe, z_hat, text, bits, first=GROUP_BITS)
    regions = token_regions(heldout, rows, bits.shape[1:4])
    return {name: float(per_token[regions == r].mean()) for r, name in enumerate(REGIONS) if (regions == r).any()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="token cache built from Shapes (training)")
    parser.add_argument("--heldout", type=Path, required=True, help="token cache of clips training never saw")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n", type=int, default=64, help="held-out single-object clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bits", type=int, default=GROUP_BITS, help="the finest level's first bits the probe learns")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "n"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.cache.resolve() == args.heldout.resolve():
        raise ValueError(f"--heldout {args.heldout} is the training cache: report on clips training never saw")
    probe = train_probe(args.cache, args.steps, args.batch_size, args.seed, args.bits)
    got = heldout_nats(probe, args.heldout, args.n)
    print(f"edge probe of {args.bits} bits, {args.steps} steps of {args.batch_size} on {args.cache}; first group of the finest level, "
          f"nats per bit on {args.n} clips of {args.heldout}:")
    print("  " + "   ".join(f"{name} {v:.3f}" for name, v in got.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
