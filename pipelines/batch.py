"""Resumable batch text-to-video: one mp4 per prompt plus `manifest.jsonl`, on one or many processes.

The "batch tools" of DESIGN.md (Scale story) on top of `PyraTokT2VPipeline`; runs alone or under
`accelerate launch` (`accelerate launch -m pipelines.batch --prompts P --out-dir D`).

Layout of `out_dir`: `{index:06d}_{slug}.mp4` per prompt and `manifest.jsonl`, one JSON line per finished
video (index, prompt, seed, file and the settings), sorted by index, one line per index.
- Seeds: video i uses a CPU `torch.Generator` seeded with `seed + i`, so it does not depend on the
  batch size, the number of processes or which process made it.
- Atomic outputs: each mp4 is written to a hidden temporary sibling, then `os.replace`d into place;
  a manifest line is appended only after its file is in place.
- Processes never share a file: process r appends to `manifest.rank{r}.jsonl`. The main process merges
  all of them into `manifest.jsonl` (written to a temporary file, then replaced) at the start (folding in
  what an interrupted run left) and at the end, keeping the last line per index, and deletes them.
- Resume: at the start, hidden `.*.mp4` temporaries are deleted and every manifest line is checked (file
  decodes to the recorded frame count and size); what is missing or invalid is generated again. A line
  made with other settings (or another prompt at that index) is an error: use a fresh out_dir.
  Run one batch job per out_dir at a time (a second job would delete the first one's temporaries).
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from pyratok.accelerate_utils import process_state
from pyratok.data.video_io import VideoReadError, read_video, write_video

from .video_export import frames_to_uint8

MANIFEST = "manifest.jsonl"
_IDENTITY = ("prompt", "seed", "file")


def read_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per line; blank lines are skipped (prompt indices count the others)."""
    prompts = [line.strip() for line in Path(path).read_text().splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError(f"{path} has no prompts (one per line expected)")
    return prompts


def output_name(index: int, prompt: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "video"
    return f"{index:06d}_{slug}.mp4"


def make_state() -> PartialState:
    """The process state of `accelerate launch` (gloo between CPU processes), or a single process."""
    return process_state()


def _read_lines(path: Path) -> list[dict]:
    """JSON lines of a manifest; an unparsable line (a crash mid-write) is skipped."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def is_valid_video(path: Path, num_frames: int, height: int, width: int) -> bool:
    """The file decodes to the end with exactly `num_frames` frames of height x width."""
    try:
        frames, meta = read_video(path, num_frames=1, start=num_frames - 1)
    except (VideoReadError, ValueError, OSError):
        return False
    return meta.num_frames == num_frames and frames.shape[1:3] == (height, width)


def consolidate(out_dir: Path, plan: list[dict], settings: dict, check_all: bool) -> dict[int, dict]:
    """Main process only, while no other process writes: merge the rank manifests into manifest.jsonl.

    Keeps, per index, the last line whose file is valid (all lines when `check_all`, else only the
    rank-manifest lines are decoded); deletes temporaries and rank manifests. Returns index -> record.
    """
    for tmp in list(out_dir.glob(".*.mp4")) + list(out_dir.glob(f".{MANIFEST}.*.tmp")):
        tmp.unlink(missing_ok=True)
    rank_files = sorted(out_dir.glob("manifest.rank*.jsonl"))
    kept: dict[int, dict] = {}
    sources = [(out_dir / MANIFEST, check_all)] + [(p, True) for p in rank_files]
    for source, check in sources:
        for record in _read_lines(source):
            index = record.get("index")
            expected = plan[index] if isinstance(index, int) and 0 <= index < len(plan) else None
            wanted = {**(expected or {}), **settings}
            diff = {k: (record.get(k), v) for k, v in wanted.items() if record.get(k) != v}
            if expected is None or diff:
                raise ValueError(f"{out_dir / MANIFEST} line for index {index} was made with other prompts or "
                                 f"settings ({'; '.join(f'{k}: {a!r} != {b!r}' for k, (a, b) in diff.items())}); "
                                 "use a fresh --out-dir")
            if not check or is_valid_video(out_dir / record["file"], *_size(settings)):
                kept[index] = record
            else:
                kept.pop(index, None)
    lines = "".join(json.dumps(kept[i]) + "\n" for i in sorted(kept))
    tmp = out_dir / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(lines)
    os.replace(tmp, out_dir / MANIFEST)
    for path in rank_files:
        path.unlink()
    return kept


def _size(settings: dict) -> tuple[int, int, int]:
    return settings["num_frames"], settings["height"], settings["width"]


def _append_line(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def generate_batch(pipe, prompts: list[str], out_dir: str | os.PathLike, seed: int = 0, batch_size: int = 4,
                   num_frames: int = 17, height: int | None = None, width: int | None = None,
                   guidance_scale: float = 3.0, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, finest_decode: str = "sample", negative_prompt: str | None = None,
                   fps: float = 8, model: str | None = None, state: PartialState | None = None) -> dict:
    """Generate every prompt not yet finished in `out_dir`; returns counts (see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    state = state if state is not None else make_state()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    default_h, default_w = pipe.default_size()
    settings = {"num_frames": num_frames, "height": default_h if height is None else height,
                "width": default_w if width is None else width,
                "guidance_scale": guidance_scale, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                "finest_decode": finest_decode, "negative_prompt": negative_prompt,
                "fps": fps, "model": model}
    plan = [{"index": i, "prompt": p, "seed": seed + i, "file": output_name(i, p)} for i, p in enumerate(prompts)]
    pipe.check_inputs(prompts[:batch_size], negative_prompt=negative_prompt, num_frames=num_frames,  # before any work
                      height=settings["height"], width=settings["width"], guidance_scale=guidance_scale,
                      temperature=temperature, top_k=top_k, top_p=top_p, finest_decode=finest_decode,
                      output_type="np")

    if state.is_main_process:
        consolidate(out_dir, plan, settings, check_all=True)
    state.wait_for_everyone()
    done = {record["index"] for record in _read_lines(out_dir / MANIFEST)}
    todo = [item for item in plan if item["index"] not in done]
    rank_manifest = out_dir / f"manifest.rank{state.process_index}.jsonl"
    written = 0
    with state.split_between_processes(todo) as mine, \
            tqdm(total=len(mine), desc="prompts", unit="video", disable=not state.is_main_process) as bar:
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            frames = pipe(
                [item["prompt"] for item in chunk], negative_prompt=negative_prompt, num_frames=num_frames,
                height=settings["height"], width=settings["width"], guidance_scale=guidance_scale,
                temperature=temperature, top_k=top_k, top_p=top_p, finest_decode=finest_decode,
                generator=[torch.Generator().manual_seed(item["seed"]) for item in chunk],
                output_type="np",
            ).frames  # (b, f, h, w, 3) in [0, 1]
            for item, video in zip(chunk, frames):
                write_video(frames_to_uint8(video), out_dir / item["file"], fps=fps)  # atomic
                _append_line(rank_manifest, {**item, **settings})
                written += 1
                bar.update()
    state.wait_for_everyone()
    finished = len(done) + written
    if state.is_main_process:
        finished = len(consolidate(out_dir, plan, settings, check_all=False))
    state.wait_for_everyone()
    return {"prompts": len(plan), "skipped": len(done), "written": written, "finished": finished}


def main(argv: list[str] | None = None) -> int:
    """`python -m pipelines.batch ARGS` == `pyratok generate ARGS` (for `accelerate launch -m`)."""
    from .cli import main as cli_main

    return cli_main(["generate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
