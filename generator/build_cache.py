"""Build the generator's token cache from a trained tokenizer and captioned clips, once, on many processes.

Runs the tokenizer's encoder and the text encoder over Shapes, a folder of captioned videos or WebDataset
shards (one part per tar shard) and stores token pyramids plus text states as safetensors shards
(DESIGN.md "Generator", "Scale story").
Samples are cut into parts of --shard-size; part k is a small cache of its own in parts/part_k/, made by
process k mod the number of processes and renamed into place when complete: a rerun skips the parts already
there (resume), and the main process writes index.json over all of them once every part exists.
    python -m generator.build_cache --tokenizer runs/tok/tokenizer --out runs/token_cache --n 4000
    accelerate launch -m generator.build_cache --tokenizer ... --out ...     # parts split across processes
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pyratok.accelerate_utils import process_state
from pyratok.data.folder import VideoTextDataset
from pyratok.data.shapes import ShapesDataset
from pyratok.data.shapes_judge import caption_in_split
from pyratok.help_format import DefaultsFormatter
from pyratok.text_encoder import TextEncoder
from pyratok.tokenizer import PyraTokTokenizer

from .contrast import SwappedCaptions, parse_word_groups
from .token_cache import INDEX, Q_CONFIG, Q_WEIGHTS, build_token_cache

SETTINGS = "build_settings.json"
PARTS = "parts"
DEFAULT_SHAPES = 4000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=DefaultsFormatter)
    p.add_argument("--tokenizer", required=True, help="a saved PyraTokTokenizer folder")
    p.add_argument("--out", required=True, help="cache folder to write (or to finish: a rerun resumes)")
    p.add_argument("--n", type=int, default=None,
                   help=f"number of samples (default: {DEFAULT_SHAPES} Shapes clips, or all of --folder)")
    p.add_argument("--folder", default=None, help="a folder of captioned videos instead of Shapes")
    p.add_argument("--shards", default=None, help="a folder of WebDataset shards (`pyratok shard`): one part per shard")
    p.add_argument("--split", default="train", help="Shapes split: train or heldout")
    p.add_argument("--two-objects", type=int, default=0,
                   help="two-object Shapes clips added after the --n single-object ones (multi-object captions)")
    p.add_argument("--two-objects-apart", type=float, default=None, metavar="PX",
                   help="keep the two objects' boxes at least PX pixels apart in every frame (default: placed "
                        "independently, so they may overlap)")
    p.add_argument("--num-frames", type=int, default=17, help="frames per clip, 1 + 4k")
    p.add_argument("--size", type=int, default=64, help="clip height and width in pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the Shapes clips / the folder's crops")
    p.add_argument("--batch-size", type=int, default=16, help="clips per encoder call")
    p.add_argument("--shard-size", type=int, default=256, help="samples per shard (the unit of work and resume)")
    p.add_argument("--contrast-words", action="append", default=None, metavar="WORD,WORD,...",
                   help="a group of words to swap (repeatable): each caption is also stored with one word of a "
                        "group swapped for another of it, for train.contrast_weight (generator.contrast)")
    p.add_argument("--latents", action="store_true",
                   help="also store each clip's unquantized latent, for a refiner that draws it (`target: latent`)")
    p.add_argument("--text-encoder", default=None, help="local text encoder folder (default: MiniLM)")
    p.add_argument("--device", default=None, help="torch device (default: this process's accelerate device)")
    return p


class Part:
    """One unit of work, written as one shard of the cache: the samples of `items` (an iterable), or
    `dataset[i]` for i in `items` when a dataset is given; `size` of them."""

    def __init__(self, items, size: int, dataset=None):
        self.items, self.size, self.dataset = items, size, dataset

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        return iter(self.items) if self.dataset is None else (self.dataset[i] for i in self.items)


def dataset_parts(dataset, shard_size: int) -> list[Part]:
    """An indexable dataset cut into consecutive parts of `shard_size` samples."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    bounds = [(k, min(k + shard_size, len(dataset))) for k in range(0, len(dataset), shard_size)]
    return [Part(range(a, b), b - a, dataset) for a, b in bounds]


def make_parts(args: argparse.Namespace) -> list[Part]:
    """The samples to encode: Shapes clips, the first --n clips of a folder, or one part per tar shard."""
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be positive, got {args.n}")
    if sum(x is not None for x in (args.folder, args.shards)) > 1:
        raise ValueError("give --folder or --shards, not both")
    if args.two_objects_apart is not None and not args.two_objects:
        raise ValueError(f"--two-objects-apart {args.two_objects_apart} places two-object clips: give --two-objects")
    if args.two_objects and (args.folder or args.shards):
        raise ValueError(f"--two-objects {args.two_objects} adds Shapes clips; it does not apply to "
                         "--folder / --shards")
    if args.contrast_words and args.shards:
        raise ValueError(f"--contrast-words {args.contrast_words} needs indexed samples: Shapes or --folder, "
                         "not --shards")
    if args.shards:
        from pyratok.data.shards import ShardVideoDataset, shard_files

        return [Part(ShardVideoDataset([path], num_frames=args.num_frames, size=args.size, seed=args.seed,
                                       split_by_node=False), count) for path, count in shard_files(args.shards)]
    if args.folder:
        dataset = VideoTextDataset(args.folder, num_frames=args.num_frames, size=args.size, seed=args.seed,
                                   temporal_crop="centre")
        if args.n is not None and args.n < len(dataset):
            dataset = torch.utils.data.Subset(dataset, range(args.n))
    else:
        dataset = shapes_dataset(args.split, args.n or DEFAULT_SHAPES, args.two_objects, args.num_frames, args.size,
                                 args.seed, args.two_objects_apart)
    if args.contrast_words:  # Shapes: a swapped caption names only pairs of the split (no held-out pair)
        allowed = None if args.folder else functools.partial(caption_in_split, split=args.split)
        dataset = SwappedCaptions(dataset, parse_word_groups(args.contrast_words), args.seed, allowed)
    return dataset_parts(dataset, args.shard_size)


def shapes_dataset(split: str, n: int, two_objects: int, num_frames: int, size: int, seed: int,
                   min_gap: float | None = None):
    """The Shapes clips of a cache: `n` single-object clips, then `two_objects` two-object ones (their boxes
    `min_gap` px apart in every frame; None: placed independently)."""
    if two_objects < 0:
        raise ValueError(f"--two-objects {two_objects}: must be >= 0")
    single = ShapesDataset(split=split, length=n, num_frames=num_frames, height=size, width=size, seed=seed)
    if not two_objects:
        return single
    pairs = ShapesDataset(split=split, length=two_objects, num_frames=num_frames, height=size, width=size,
                          seed=seed, num_objects=2, min_gap=min_gap)
    return torch.utils.data.ConcatDataset([single, pairs])


def check_settings(out: Path, settings: dict) -> None:
    """A rerun must use the settings the shards there were made with (written once, by the first run)."""
    path = out / SETTINGS
    if path.is_file():
        before = json.loads(path.read_text())
        diff = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if diff:
            raise ValueError(f"{out} holds a cache made with other settings "
                             f"({'; '.join(f'{k}: {a!r} != {b!r}' for k, (a, b) in diff.items())}); use a new --out")
        return
    tmp = out / f".{SETTINGS}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(settings, indent=2) + "\n")
    os.replace(tmp, path)


class _EncoderOnly:
    """The tokenizer without its `.quantizer`: parts after the first do not each store a copy of it."""

    def __init__(self, tokenizer):
        self.encode = tokenizer.encode


def part_folder(out_dir: Path, part: int) -> Path:
    return out_dir / PARTS / f"part_{part:05d}"


@torch.no_grad()
def build_cache_parts(tokenizer, text_encoder, parts: list[Part], out_dir, batch_size: int = 16, state=None,
                      device=None, progress: bool = True, latents: bool = False) -> dict:
    """Encode the parts this process owns (k mod the number of processes) and has not finished yet, each a
    small cache of its own (`build_token_cache`) in parts/part_k/, made in a hidden folder and renamed when
    complete; the main process then writes index.json listing every part's shards in order (and copies part
    0's quantizer). Returns {"parts", "written", "skipped"} for this process."""
    state = state if state is not None else process_state()
    out_dir = Path(out_dir)
    mine = range(state.process_index, len(parts), state.num_processes)
    todo = [k for k in mine if not (part_folder(out_dir, k) / INDEX).is_file()]
    bar = tqdm(total=sum(len(parts[k]) for k in todo), desc=f"token cache (process {state.process_index})",
               unit="sample", disable=not progress)

    def counted(samples):
        for sample in samples:
            yield sample
            bar.update()

    for k in todo:
        final = part_folder(out_dir, k)
        tmp = final.with_name(f".{final.name}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        encoder = tokenizer if k == 0 else _EncoderOnly(tokenizer)
        build_token_cache(encoder, text_encoder, counted(parts[k]), tmp, batch_size=batch_size,
                          shard_size=max(len(parts[k]), 1), device=device, progress=False, latents=latents)
        os.replace(tmp, final)
    bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        write_merged_index(out_dir, len(parts))
    state.wait_for_everyone()
    return {"parts": len(parts), "written": len(todo), "skipped": len(mine) - len(todo)}


def write_merged_index(out_dir: Path, num_parts: int) -> None:
    """index.json over every part's shards (paths relative to out_dir), part 0's quantizer beside it."""
    indexes = []
    for k in range(num_parts):
        path = part_folder(out_dir, k) / INDEX
        if not path.is_file():
            raise RuntimeError(f"{out_dir}: part {k} is missing after every process finished")
        indexes.append(json.loads(path.read_text()))
    layout = {key: value for key, value in indexes[0].items() if key not in ("shards", "num_samples")}
    for k, index in enumerate(indexes):
        other = {key: value for key, value in index.items() if key not in ("shards", "num_samples")}
        if other != layout:
            raise ValueError(f"{out_dir}: part {k} differs from part 0 in its layout; use a new --out")
    shards = [{**shard, "file": f"{PARTS}/{part_folder(out_dir, k).name}/{shard['file']}"}
              for k, index in enumerate(indexes) for shard in index["shards"]]
    for name in (Q_WEIGHTS, Q_CONFIG):
        if (part_folder(out_dir, 0) / name).is_file():
            shutil.copy2(part_folder(out_dir, 0) / name, out_dir / name)
    merged = {**layout, "num_samples": sum(s["num_samples"] for s in shards), "shards": shards}
    tmp = out_dir / f".{INDEX}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(merged, indent=2) + "\n")
    os.replace(tmp, out_dir / INDEX)  # last: a cache with an index is complete


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state = process_state()
    device = torch.device(args.device) if args.device else state.device
    out = Path(args.out)
    parts = make_parts(args)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "device", "batch_size")}
    for name, unused in (("two_objects", 0), ("two_objects_apart", None), ("contrast_words", None),
                         ("latents", False)):
        if settings[name] == unused:  # recorded only when used: older caches stay resumable
            del settings[name]
    settings["tokenizer"] = str(Path(args.tokenizer).resolve())
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        check_settings(out, settings | {"parts": [len(p) for p in parts]})
        for stale in (out / PARTS).glob(".part_*"):  # what an interrupted run was making
            shutil.rmtree(stale)
    state.wait_for_everyone()
    check_settings(out, settings | {"parts": [len(p) for p in parts]})  # every process: the same settings
    tokenizer = PyraTokTokenizer.from_pretrained(args.tokenizer).to(device).eval()
    text_encoder = TextEncoder.from_pretrained(args.text_encoder, device=device)
    summary = build_cache_parts(tokenizer, text_encoder, parts, out, args.batch_size, state, device,
                                progress=state.is_local_main_process, latents=args.latents)
    if state.is_main_process:
        print(json.dumps({**summary, "out": str(out), "index": str(out / INDEX)}))
    if state.num_processes > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
