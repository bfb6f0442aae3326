"""How much a trained generator relies on each word of a Shapes prompt, teacher-forced on its token cache.

    python bench/word_reliance.py --cache DIR --generator DIR [--n 64]

For `n` single-object clips of a token cache built from Shapes (`generator.build_cache`), the bit
cross-entropy per level (nats per bit) with the true caption, with the shape word and with the colour
word swapped for the next one in the palette / shape list, and with no text; and at the finest level,
per 8-bit group. A word the generator follows raises the loss when swapped; a word it ignores does not.
Last, the finest level's per-group loss with the true caption at background, boundary and interior
tokens (`token_regions`: where a shape's edge runs is decided at the boundary tokens). For a generator
whose FinestConv draws in passes (`model.finest_conv_passes`), the same with a random share of the finest
bits given (GIVEN_SHARES), over the bits not given: how much the bits drawn first tell the rest.
With `--two-objects N`, also the first N two-object clips whose objects move differently, each caption
written canonically, with the two objects' motions traded, and with no text: a generator that binds each
motion to its object pays for the trade; one that reads the motions as a bag of words does not. A generator
with `model.phrase_tokens` is also given the canonical captions with its phrase vectors masked out: one that
reads them pays for that.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from generator import PyraTokGenerator  # noqa: E402
from generator.build_cache import DEFAULT_SHAPES, shapes_dataset  # noqa: E402
from generator.contrast import swap_word  # noqa: E402
from generator.heads import nats_per_bit  # noqa: E402
from generator.objective import teacher_forcing_inputs  # noqa: E402
from generator.token_cache import TokenCacheDataset  # noqa: E402
from pyratok.data.shapes import COLOURS, SHAPES, caption_for  # noqa: E402
from pyratok.data.shapes_judge import OBJECT_THRESHOLD, parse_objects  # noqa: E402
from pyratok.text_encoder import TextEncoder, join_phrases, text_reading  # noqa: E402


REGIONS = ("background", "boundary", "interior")
GIVEN_SHARES = (0.25, 0.5, 0.75)


def cache_clips(cache_dir: Path):
    """The Shapes clips a token cache was built from, in its order (from the settings it records)."""
    settings = json.loads((cache_dir / "build_settings.json").read_text())
    if settings.get("folder") or settings.get("shards"):
        raise ValueError(f"{cache_dir} was not built from Shapes (folder / shards set): captions unknown")
    return shapes_dataset(settings["split"], settings["n"] or DEFAULT_SHAPES, settings.get("two_objects", 0),
                          settings["num_frames"], settings["size"], settings["seed"])


def token_regions(cache_dir: Path, rows: list[int], grid) -> torch.Tensor:
    """(b, t, h, w) long: 0 where a token's cell of the clip holds no object pixel (the judge's threshold),
    2 where it holds only object pixels, 1 (the boundary) in between. Cell of latent frame 0: frame 0;
    of latent frame i > 0: the `stride` frames up to 1 + i * stride (the causal VAE's frame grouping)."""
    data = cache_clips(cache_dir)
    video = torch.stack([data[i]["video"] for i in rows])  # (b, c, T, H, W) in [-1, 1]
    t, h, w = grid
    frames, height, width = video.shape[2:]
    stride = (frames - 1) // max(t - 1, 1)
    if 1 + (t - 1) * stride != frames or height % h or width % w:
        raise ValueError(f"clips of {frames}x{height}x{width} do not tile the token grid {tuple(grid)}")
    obj = ((video.amax(1) + 1) * 127.5 > OBJECT_THRESHOLD).float()  # (b, T, H, W)
    cells = torch.cat([obj[:, :1].repeat_interleave(stride, 1), obj[:, 1:]], 1)  # (b, t * stride, H, W)
    share = F.avg_pool3d(cells[:, None], (stride, height // h, width // w))[:, 0]  # (b, t, h, w)
    return (share > 0).long() + (share == 1).long()


def shapes_captions(cache_dir: Path, n: int, two_objects: bool = False) -> tuple[list[int], list[str]]:
    """Rows and captions of the first `n` single-object clips (or two-object ones whose objects move
    differently), from the Shapes settings the cache records."""
    data = cache_clips(cache_dir)
    rows, captions = [], []
    for i in range(len(data)):
        caption = data[i]["caption"]
        objects = parse_objects(caption)
        if (len(objects) == 2 and objects[0][2] != objects[1][2]) if two_objects else len(objects) == 1:
            rows.append(i)
            captions.append(caption)
        if len(rows) == n:
            break
    return rows, captions


def canonical(caption: str, trade_motions: bool = False) -> str:
    """A Shapes caption in the canonical template; with `trade_motions`, each of its two objects moving as
    the other does: "a red circle moving left and a blue square growing" -> "a red circle growing and a
    blue square moving left"."""
    objects = parse_objects(caption)
    if trade_motions:
        if len(objects) != 2 or objects[0][2] == objects[1][2]:
            raise ValueError(f"trading motions needs two objects that move differently, got {caption!r}")
        objects = [(c, s, m) for (c, s, _), (_, _, m) in zip(objects, objects[::-1])]
    return " and ".join(caption_for(*o) for o in objects)


@torch.no_grad()
def check_captions(batch: dict, text_encoder, captions: list[str]) -> None:
    """ValueError unless the cache's text states are the encoded `captions` (the same clips, in order)."""
    if batch["text_states"] is None:
        raise ValueError("the cache holds no text states: built without a text encoder")
    text = text_encoder(captions)
    n = text.hidden_states.shape[1]
    cached, mask = batch["text_states"][:, :n], text.attention_mask.bool()
    if not torch.allclose(cached[mask], text.hidden_states.float()[mask], atol=2e-2):
        raise ValueError("the cache's text is not the captions its build settings give: rebuilt with other data?")


@torch.no_grad()
def teacher_forced_logits(model, quantizer, batch, text_encoder, captions: list[str],
                          hide_phrases: bool = False, finest_given=None) -> list[torch.Tensor]:
    """Per level, the head's logits (bits or codes) given the true coarser levels and `captions` ("" for none);
    a generator with `phrase_tokens` reads the phrase vectors too (or alone, `word_tokens` False), unless
    `hide_phrases` masks them out.
    finest_given: (bits, flags), finest bits given to a FinestConv that draws in passes."""
    text = text_encoder(captions)
    states, mask = text.hidden_states, text.attention_mask
    reading = text_reading(model.config)
    if reading["phrases"]:
        phrase_states, phrase_mask = text_encoder.phrases(captions)
        states, mask = join_phrases(states, mask, phrase_states, phrase_mask & (not hide_phrases),
                                    words=reading["words"])
    inputs = teacher_forcing_inputs(quantizer, batch["bits"], batch["latent_grid"], passes=model.config.finest_passes)
    keep = torch.zeros(len(captions), dtype=torch.bool)
    return model(inputs, states.float(), mask, drop_text=keep, target_bits=batch["bits"], finest_given=finest_given)


def bit_losses(model, quantizer, batch, text_encoder, captions: list[str], hide_phrases: bool = False):
    """Per level, the mean cross-entropy of each bit (k,) given `captions` ("" for none)."""
    logits = teacher_forced_logits(model, quantizer, batch, text_encoder, captions, hide_phrases)
    return [nats_per_bit(lg, b) for lg, b in zip(logits, batch["bits"])]


def region_losses(logits: torch.Tensor, bits: torch.Tensor, regions: torch.Tensor) -> dict[str, torch.Tensor]:
    """One level's mean cross-entropy of each bit (k,) over the tokens of each region present."""
    return {name: nats_per_bit(logits[regions == r], bits[regions == r])
            for r, name in enumerate(REGIONS) if (regions == r).any()}


def given_region_losses(model, quantizer, batch, text_encoder, captions: list[str], regions: torch.Tensor,
                        share: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """The finest level's mean cross-entropy of each bit (k,) per region, over the bits not given, when each
    finest bit is given with probability `share` (seeded) to a FinestConv that draws in passes."""
    bits = batch["bits"][-1]  # (b, t, h, w, k)
    given = torch.rand(bits.shape, generator=torch.Generator().manual_seed(seed)) < share
    logits = teacher_forced_logits(model, quantizer, batch, text_encoder, captions, finest_given=(bits, given))[-1]
    per_bit = F.binary_cross_entropy_with_logits(logits.float(), (bits.float() + 1) / 2, reduction="none")
    out = {}
    for r, name in enumerate(REGIONS):
        left = (~given & (regions == r)[..., None]).float()  # (b, t, h, w, k)
        if left.sum() > 0:
            out[name] = (per_bit * left).flatten(0, -2).sum(0) / left.flatten(0, -2).sum(0).clamp_min(1.0)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="token cache built from Shapes")
    parser.add_argument("--generator", type=Path, required=True, help="generator folder trained on that cache")
    parser.add_argument("--n", type=int, default=64, help="single-object clips")
    parser.add_argument("--two-objects", type=int, default=0, help="two-object clips whose motions are traded")
    args = parser.parse_args(argv)
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.two_objects < 0:
        raise ValueError(f"--two-objects must be >= 0, got {args.two_objects}")
    data = TokenCacheDataset(args.cache)
    rows, captions = shapes_captions(args.cache, args.n)
    batch = data.collate([data[i] for i in rows])
    model = PyraTokGenerator.from_pretrained(args.generator).eval()
    quantizer, text_encoder = data.load_quantizer("cpu"), TextEncoder.from_pretrained()
    check_captions(batch, text_encoder, captions)
    variants = {"true caption": captions,
                "shape swapped": [swap_word(c, [SHAPES]) for c in captions],
                "colour swapped": [swap_word(c, [list(COLOURS)]) for c in captions],
                "no text": [""] * len(captions)}
    losses = {name: bit_losses(model, quantizer, batch, text_encoder, caps) for name, caps in variants.items()}
    finest = teacher_forced_logits(model, quantizer, batch, text_encoder, captions)[-1]
    regions = token_regions(args.cache, rows, batch["bits"][-1].shape[1:4])
    by_region = region_losses(finest, batch["bits"][-1], regions)

    def per_group(nats: torch.Tensor) -> str:  # (k,) -> the mean of each bit group
        return " / ".join(f"{float(g.mean()):.3f}" for g in nats.split(quantizer.config.bits_per_group))

    def report(losses: dict[str, list[torch.Tensor]]) -> None:  # the first variant is the baseline
        base = [float(l.mean()) for l in next(iter(losses.values()))]
        for i, (name, per_level) in enumerate(losses.items()):
            means = [float(l.mean()) for l in per_level]
            rise = "   rise " + " / ".join(f"{m - b:+.3f}" for m, b in zip(means, base)) if i else ""
            finest_groups = per_group(per_level[-1])
            print(f"{name:15s} " + " / ".join(f"{m:.3f}" for m in means) + rise + f"   finest, per group {finest_groups}")

    print(f"{args.generator} on {len(rows)} clips of {args.cache}: nats per bit, levels coarse to fine")
    report(losses)
    print("finest level with the true caption, per group, by token:")
    for name, nats in by_region.items():
        print(f"  {name:10s} {int((regions == REGIONS.index(name)).sum()):7d} tokens   {per_group(nats)}")
    if model.config.get("finest_conv_passes", 1) > 1:
        for share in GIVEN_SHARES:
            print(f"finest level, {share:.0%} of its bits given, the others, per group, by token:")
            for name, nats in given_region_losses(model, quantizer, batch, text_encoder, captions, regions,
                                                  share).items():
                print(f"  {name:10s} {per_group(nats)}")
    if args.two_objects:
        rows, captions = shapes_captions(args.cache, args.two_objects, two_objects=True)
        if not rows:
            raise ValueError(f"{args.cache} holds no two-object clips whose objects move differently")
        batch = data.collate([data[i] for i in rows])
        variants = {"canonical": [canonical(c) for c in captions],
                    "motions traded": [canonical(c, trade_motions=True) for c in captions], "no text": [""] * len(rows)}
        print(f"{len(rows)} two-object clips whose objects move differently:")
        losses = {name: bit_losses(model, quantizer, batch, text_encoder, caps) for name, caps in variants.items()}
        if text_reading(model.config) == {"phrases": True, "words": True}:  # the phrase vectors masked out
            losses["phrases hidden"] = bit_losses(model, quantizer, batch, text_encoder, variants["canonical"], True)
        report(losses)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
