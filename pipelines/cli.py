"""The `pyratok` command line: one argparse subcommand per entry in `COMMANDS`.

User-facing tools of the design (DESIGN.md "Pipeline", "Scale story"); add a subcommand by adding
an entry `name: Command(help, add_arguments, run)` below, with `run(args) -> exit code`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Callable, NamedTuple

from pipelines import locate as _locate  # heavy imports stay inside _locate.run
from pyratok.help_format import DefaultsFormatter


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ---- pyratok shapes ---------------------------------------------------------------------------
def _add_shapes_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, required=True, help="number of clips to write")
    p.add_argument("--split", choices=["train", "heldout"], default="train",
                   help="train colour x shape pairs, or the held-out pairs")
    p.add_argument("--out", type=Path, required=True, help="output folder (mp4 files + captions.jsonl)")
    p.add_argument("--seed", type=int, default=0, help="clip i is drawn from (split, i, seed)")
    p.add_argument("--num-frames", type=int, default=17, help="frames per clip")
    p.add_argument("--height", type=int, default=64, help="pixels")
    p.add_argument("--width", type=int, default=64, help="pixels")
    p.add_argument("--fps", type=int, default=8, help="frame rate written to the mp4 files")
    p.add_argument("--objects", type=int, choices=[1, 2], default=1, help="objects per clip")
    p.add_argument("--textured-prob", type=float, default=0.0, help="share of clips on a dim textured background")


def _json_boxes(boxes) -> list:
    """(T, 4) tensor -> nested lists rounded to 0.01 px, NaN (object absent) -> null."""
    return [[None if math.isnan(v) else round(v, 2) for v in row] for row in boxes.tolist()]


def _label_record(sample: dict, file: str) -> dict:
    """Everything but masks and pixels, JSON-ready; `file` + `caption` make it a VideoTextDataset index."""
    return {
        "file": file, "caption": sample["caption"], "colour": sample["colour"], "shape": sample["shape"],
        "motion": sample["motion"], "split": sample["split"], "index": sample["index"], "fps": sample["fps"],
        "boxes": _json_boxes(sample["boxes"]), "presence": sample["presence"].tolist(),
        "object_boxes": [_json_boxes(b) for b in sample["object_boxes"]], "objects": sample["objects"],
    }


def run_shapes(args: argparse.Namespace) -> int:
    from pyratok.data.shapes import ShapesDataset, video_to_uint8
    from pyratok.data.video_io import write_video

    if args.n <= 0:
        raise ValueError(f"--n must be positive, got {args.n}")
    ds = ShapesDataset(split=args.split, length=args.n, num_frames=args.num_frames, height=args.height,
                       width=args.width, fps=args.fps, num_objects=args.objects,
                       textured_prob=args.textured_prob, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(args.n):
        sample = ds[i]
        name = f"{args.split}_{i:06d}.mp4"
        write_video(video_to_uint8(sample["video"]), args.out / name, fps=args.fps)
        lines.append(json.dumps(_label_record(sample, name)))
    tmp = args.out / f".captions.jsonl.{os.getpid()}.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, args.out / "captions.jsonl")
    print(f"wrote {args.n} {args.split} clips ({args.num_frames}x{args.height}x{args.width}) "
          f"and captions.jsonl to {args.out}")
    return 0


# ---- pyratok shard ----------------------------------------------------------------------------
def _add_shard_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="a folder of videos with captions.jsonl or .txt sidecars")
    p.add_argument("--out", type=Path, required=True, help="folder for shard-*.tar and shards.json")
    p.add_argument("--samples-per-shard", type=int, default=1000, help="videos per tar shard")


def run_shard(args: argparse.Namespace) -> int:
    from pyratok.data.shards import SHARD_INDEX, pack_folder

    index = pack_folder(args.folder, args.out, args.samples_per_shard)
    print(f"wrote {index['num_samples']} videos in {len(index['shardlist'])} shards and {SHARD_INDEX} to {args.out}")
    return 0


# ---- pyratok info -----------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_info() -> dict:
    """Versions, device and optional accelerators (xformers needs CUDA; DeepSpeed must import)."""
    import torch

    cuda = torch.cuda.is_available()
    info = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("diffusers", "transformers", "accelerate", "deepspeed", "av", "pyratok"):
        info[dist] = _version(dist) or "not installed"
    info["cuda_available"] = cuda
    info["device"] = f"cuda ({torch.cuda.device_count()}x {torch.cuda.get_device_name(0)})" if cuda else "cpu"
    has_xformers = importlib.util.find_spec("xformers") is not None
    info["xformers_usable"] = bool(has_xformers and cuda)
    info["xformers"] = ("usable" if cuda else "installed, unusable without CUDA") if has_xformers else "not installed"
    info["deepspeed_importable"], error = _try_import_deepspeed()
    if error:
        info["deepspeed_error"] = error
    return info


def _try_import_deepspeed() -> tuple[bool, str | None]:
    """Import DeepSpeed with its import-time stdout warnings muted (they would corrupt `info --json`)."""
    ds_logger = logging.getLogger("DeepSpeed")  # the logger DeepSpeed itself creates and prints through
    ds_logger.addFilter(_drop)
    try:
        importlib.import_module("deepspeed")
        return True, None
    except Exception as err:  # deepspeed raises assorted errors when its ops or CUDA are missing
        return False, f"{type(err).__name__}: {err}"[:200]
    finally:
        ds_logger.removeFilter(_drop)


def _drop(record: logging.LogRecord) -> bool:
    return False


def run_info(args: argparse.Namespace) -> int:
    info = environment_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _add_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


# ---- pyratok generate / demo ----------------------------------------------------------------
DEMO_PROMPT = "a red circle moving left"


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None,
                   help="pipeline folder (default: the shipped checkpoints/pyratok-shapes-tiny)")
    p.add_argument("--seed", type=int, default=0, help="video i of a batch uses seed + i")
    p.add_argument("--num-frames", type=int, default=17, help="1 + 4k frames")
    p.add_argument("--height", type=int, default=None, help="pixels (default: the model's sample size)")
    p.add_argument("--width", type=int, default=None, help="pixels (default: the model's sample size)")
    p.add_argument("--guidance-scale", type=float, default=3.0,
                   help="classifier-free guidance against the learned null text (1: none), finite, >= 0")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of every bit, > 0")
    p.add_argument("--top-k", type=int, default=None, help="1: greedy bits (default: sample every bit)")
    p.add_argument("--top-p", type=float, default=None,
                   help="bits likelier than this are taken greedily, the rest sampled (default: sample every bit)")
    p.add_argument("--finest-decode", default="sample",
                   help="'sample': decode the finest level's drawn bits; 'expected': each bit's expected value "
                        "(no speckle; bitwise head)")
    p.add_argument("--negative-prompt", default=None, help="text to steer away from (default: the null text)")
    p.add_argument("--fps", type=float, default=8, help="frame rate of the written mp4")
    p.add_argument("--device", default=None, help="torch device (default: this process's accelerate device)")


def _add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", default=None, help="one prompt (with -o); or use --prompts")
    p.add_argument("-o", "--output", type=Path, default=None, help="mp4 file for the one prompt")
    p.add_argument("--contact-sheet", type=Path, default=None, help="also write the frames as a PNG grid")
    p.add_argument("--prompts", type=Path, default=None, help="batch: text file, one prompt per line")
    p.add_argument("--out-dir", type=Path, default=None, help="batch: folder for the mp4s and manifest.jsonl")
    p.add_argument("--batch-size", type=int, default=4, help="batch: videos per pipeline call")
    _add_sampling_args(p)


def _load(args: argparse.Namespace, state):
    from pipelines.pipeline_pyratok_t2v import load_pipeline
    from pyratok.default_model import default_model_path

    model = (args.model or default_model_path()).resolve()
    return load_pipeline(model, args.device or state.device), model


def _generate_one(pipe, args: argparse.Namespace, prompt: str, output: Path, sheet: Path | None) -> None:
    import torch

    from pipelines.video_export import export_to_video, frames_to_uint8
    from pyratok.data.contact_sheet import save_contact_sheet

    frames = pipe(prompt, negative_prompt=args.negative_prompt, num_frames=args.num_frames, height=args.height,
                  width=args.width, guidance_scale=args.guidance_scale, temperature=args.temperature, top_k=args.top_k,
                  top_p=args.top_p, finest_decode=args.finest_decode,
                  generator=[torch.Generator().manual_seed(args.seed)], output_type="np").frames[0]
    print(f"prompt: {prompt}\nvideo:  {export_to_video(frames, output, fps=args.fps)}")
    if sheet is not None:
        print(f"frames: {save_contact_sheet(frames_to_uint8(frames), sheet, cols=9, scale=2, labels=prompt)}")


def run_generate(args: argparse.Namespace) -> int:
    from pipelines.batch import generate_batch, make_state, read_prompts

    if (args.prompt is None) == (args.prompts is None):
        raise ValueError("give either one prompt (with -o OUT.mp4) or --prompts FILE (with --out-dir DIR)")
    if args.prompt is not None and args.output is None:
        raise ValueError("one prompt needs -o OUT.mp4")
    if args.prompts is not None and (args.out_dir is None or args.output or args.contact_sheet):
        raise ValueError("--prompts needs --out-dir DIR (and takes neither -o nor --contact-sheet)")
    state = make_state()
    pipe, model = _load(args, state)
    if args.prompt is not None:
        if state.is_main_process:
            _generate_one(pipe, args, args.prompt, args.output, args.contact_sheet)
        return 0
    summary = generate_batch(
        pipe, read_prompts(args.prompts), args.out_dir, seed=args.seed, batch_size=args.batch_size,
        num_frames=args.num_frames, height=args.height, width=args.width, guidance_scale=args.guidance_scale,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, finest_decode=args.finest_decode,
        negative_prompt=args.negative_prompt, fps=args.fps, model=str(model),
        state=state,
    )
    if state.is_main_process:
        print(json.dumps({**summary, "out_dir": str(args.out_dir)}))
    _end_processes()
    return 0


def _end_processes() -> None:
    """Tear a multi-process group down cleanly (2-process gloo runs can abort at exit otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="writes OUT/demo.mp4 and OUT/demo.png")
    p.add_argument("--prompt", default=DEMO_PROMPT, help="the text to turn into a video")
    _add_sampling_args(p)


def run_demo(args: argparse.Namespace) -> int:
    from pipelines.batch import make_state
    from pyratok.default_model import default_model_path

    if args.model is None:
        try:
            default_model_path()
        except FileNotFoundError as missing:
            return _demo_without_model(args, missing)
    pipe, _ = _load(args, make_state())
    _generate_one(pipe, args, args.prompt, args.out / "demo.mp4", args.out / "demo.png")
    return 0


def _demo_without_model(args: argparse.Namespace, missing: Exception) -> int:
    """No shipped model in this checkout: write the Shapes clip the prompt describes, and say so."""
    from pyratok.data.contact_sheet import save_contact_sheet
    from pyratok.data.shapes import ShapesDataset, video_to_uint8
    from pyratok.data.shapes_judge import parse_prompt
    from pyratok.data.video_io import write_video

    colour, shape, motion = parse_prompt(args.prompt)
    frames = video_to_uint8(ShapesDataset(split="train").render(colour, shape, motion, seed=0)["video"])
    args.out.mkdir(parents=True, exist_ok=True)
    write_video(frames, args.out / "demo.mp4", fps=8)
    save_contact_sheet(frames, args.out / "demo.png", cols=9, scale=2, labels=f"Shapes clip for: {args.prompt}")
    print(f"note: {missing}\nno trained default model yet, so this is the Shapes clip that {args.prompt!r} "
          f"describes, not a generated one (`make default-model` trains and assembles the model).\n"
          f"wrote {args.out / 'demo.mp4'} and {args.out / 'demo.png'}")
    return 0


COMMANDS = MappingProxyType({
    "shapes": Command("write Shapes clips + captions.jsonl", _add_shapes_args, run_shapes),
    "shard": Command("pack a folder of captioned videos into WebDataset tar shards", _add_shard_args, run_shard),
    "info": Command("print versions, device and optional accelerators", _add_info_args, run_info),
    "generate": Command("text to video: one prompt (-o OUT.mp4) or a prompts file (--out-dir)",
                        _add_generate_args, run_generate),
    "demo": Command("generate the demo video and its contact sheet with the default model", _add_demo_args, run_demo),
    "locate": Command(_locate.HELP, _locate.add_arguments, _locate.run),
})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyratok", description="PyraTok: pyramidal video tokenizer + text-to-video")
    parser.add_argument("--version", action="version", version=f"pyratok {_version('pyratok') or 'source'}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        command = sub.add_parser(name, help=cmd.help, description=cmd.help,
                                 formatter_class=DefaultsFormatter)
        cmd.add_arguments(command)
        add_debug_flag(command)
    return parser


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")


def report_errors(prog: str, run: Callable[[], int], debug: bool) -> int:
    """`run()`; an error becomes one line on stderr and exit code 1 (with `debug`, its traceback)."""
    if debug:
        return run()
    try:
        return run()
    except Exception as err:  # anything a user can cause, from a bad flag to a damaged model folder
        kind = "" if isinstance(err, (ValueError, FileNotFoundError)) else f"{type(err).__name__}: "
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {kind}{message} (--debug shows the traceback)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pyratok` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    return report_errors(f"pyratok {args.command}", lambda: COMMANDS[args.command].run(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
