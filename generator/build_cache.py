"""Build the generator's token cache from a trained tokenizer and captioned clips, once, on many processes.

Runs the tokenizer's encoder and the text encoder over Shapes, a folder of captioned videos or WebDataset
shards (one part per tar shard) and stores token pyramids plus text states as safetensors shards
(DESIGN.md "Generator", "Scale story").
Samples are cut into parts of --shard-size; part k becomes shard k, made by process k mod the number of
processes, written atomically: a rerun skips the shards already there (resume), and the main process
writes index.json once every part exists.
    python -m generator.build_cache --tokenizer runs/tok/tokenizer --out runs/token_cache --n 4000
    accelerate launch -m generator.build_cache --tokenizer ... --out ...     # parts split across processes
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pyratok.accelerate_utils import process_state
from pyratok.data.folder import VideoTextDataset
from pyratok.data.shapes import ShapesDataset
from pyratok.help_format import DefaultsFormatter
from pyratok.text_encoder import TextEncoder
from pyratok.tokenizer import PyraTokTokenizer

from .token_cache import INDEX, TokenCacheWriter, encode_batch, read_shard_layout, shard_name, write_index

SETTINGS = "build_settings.json"
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
    p.add_argument("--num-frames", type=int, default=17, help="frames per clip, 1 + 4k")
    p.add_argument("--size", type=int, default=64, help="clip height and width in pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the Shapes clips / the folder's crops")
    p.add_argument("--batch-size", type=int, default=16, help="clips per encoder call")
    p.add_argument("--shard-size", type=int, default=256, help="samples per shard (the unit of work and resume)")
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
        dataset = ShapesDataset(split=args.split, length=args.n or DEFAULT_SHAPES, num_frames=args.num_frames,
                                height=args.size, width=args.size, seed=args.seed)
    return dataset_parts(dataset, args.shard_size)


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


@torch.no_grad()
def build_cache_parts(tokenizer, text_encoder, parts: list[Part], out_dir, batch_size: int = 16, state=None,
                      device=None, progress: bool = True) -> dict:
    """Encode the parts this process owns (k mod the number of processes) and has not written yet; the main
    process then writes the index. Returns {"parts", "written", "skipped"} for this process."""
    state = state if state is not None else process_state()
    out_dir = Path(out_dir)
    mine = range(state.process_index, len(parts), state.num_processes)
    todo = [k for k in mine if not (out_dir / shard_name(k)).is_file()]
    bar = tqdm(total=sum(len(parts[k]) for k in todo), desc=f"token cache (process {state.process_index})",
               unit="sample", disable=not progress)
    writer = TokenCacheWriter(out_dir, shard_size=max(len(p) for p in parts) + 1)  # cut by write_part only
    for k in todo:
        batch = []
        for sample in parts[k]:
            batch.append(sample)
            if len(batch) == batch_size:
                encode_batch(tokenizer, text_encoder, batch, writer, device)
                bar.update(len(batch))
                batch = []
        if batch:
            encode_batch(tokenizer, text_encoder, batch, writer, device)
            bar.update(len(batch))
        writer.write_part(k)
    bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        files = [out_dir / shard_name(k) for k in range(len(parts))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise RuntimeError(f"{out_dir}: parts {missing} are missing after every process finished")
        layouts = [read_shard_layout(f) for f in files]
        if any(layout != layouts[0][0] for layout, _ in layouts):
            raise ValueError(f"{out_dir}: shards differ in grids or text layout; use a new --out")
        write_index(out_dir, layouts[0][0], [{"file": f.name, "num_samples": n} for f, (_, n) in zip(files, layouts)],
                    getattr(tokenizer, "quantizer", None))
    state.wait_for_everyone()
    return {"parts": len(parts), "written": len(todo), "skipped": len(mine) - len(todo)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state = process_state()
    device = torch.device(args.device) if args.device else state.device
    out = Path(args.out)
    parts = make_parts(args)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "device", "batch_size")}
    settings["tokenizer"] = str(Path(args.tokenizer).resolve())
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        check_settings(out, settings | {"parts": [len(p) for p in parts]})
    state.wait_for_everyone()
    check_settings(out, settings | {"parts": [len(p) for p in parts]})  # every process: the same settings
    tokenizer = PyraTokTokenizer.from_pretrained(args.tokenizer).to(device).eval()
    text_encoder = TextEncoder.from_pretrained(args.text_encoder, device=device)
    summary = build_cache_parts(tokenizer, text_encoder, parts, out, args.batch_size, state, device,
                                progress=state.is_local_main_process)
    if state.is_main_process:
        print(json.dumps({**summary, "out": str(out), "index": str(out / INDEX)}))
    if state.num_processes > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
