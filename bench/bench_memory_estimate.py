"""The pipeline's up-front memory estimate (generator.memory, as pipelines/pipeline_checks.py uses it) against
the peak it guards, for the shipped model: the estimate must bound the peak from above, within 25%.

Each size runs twice, each time in a fresh process that loads the shipped pipeline (tiled decode on unless
--untiled) and warms it up on one 64x64 frame: once with every tensor the call makes counted by a dispatch
mode (the tracked peak: tensor bytes alive at once), once plain for the peak resident memory over what the
warm pipeline held (VmHWM - VmRSS).
Resident memory also holds what the C allocator keeps after frees: with glibc's defaults that is most of the
gap (compare with MALLOC_TRIM_THRESHOLD_=0, which turns its adaptive thresholds off).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_memory_estimate.py          # 17x64x64 33x128x128 33x256x256
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_memory_estimate.py --sizes 129x64x64 --untiled
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


def status_bytes(key: str) -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key + ":"))


def run_case(frames: int, height: int, width: int, tiled: bool, tracked: bool) -> dict:
    """In a fresh process: one `pipe(...)` call ("pil" output); its peak, time and the pipeline's estimate."""
    import torch

    from generator.memory import LiveBytes
    from pipelines.pipeline_checks import estimate_memory
    from pipelines.pipeline_pyratok_t2v import load_pipeline
    from pyratok import default_model_path

    torch.set_num_threads(1)
    pipe = load_pipeline(default_model_path())
    if tiled:
        pipe.enable_tiling()
    pipe("warm-up", num_frames=1, height=64, width=64)  # one-time set-up (kernels, lazy imports) is not the call's
    estimate = estimate_memory(pipe, 1, frames, height, width, True, "pil")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = status_bytes("VmRSS")
    start = time.perf_counter()
    live = LiveBytes(pipe.device.type)  # not the estimate's own meta tensors
    with live if tracked else contextlib.nullcontext():
        pipe("a red circle moving left", num_frames=frames, height=height, width=width,
             generator=torch.Generator().manual_seed(0))
    return {"seconds": time.perf_counter() - start, "estimate": estimate.working,
            "peak": live.peak if tracked else status_bytes("VmHWM") - base}


def spawn(size: str, tiled: bool, tracked: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, __file__, "--case", *size.split("x"), str(int(tiled)), str(int(tracked))]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["17x64x64", "33x128x128", "33x256x256"],
                        help="FRAMESxHEIGHTxWIDTH")
    parser.add_argument("--untiled", action="store_true", help="decode without tiling")
    parser.add_argument("--case", nargs=5, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        frames, height, width, tiled, tracked = args.case
        print(json.dumps(run_case(frames, height, width, bool(tiled), bool(tracked))))
        return 0
    print(f"{'tiled' if not args.untiled else 'untiled'} decode, guidance, 'pil' output; MB; "
          f"MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_', 'unset')}")
    print(f"{'clip':<12}{'estimate':>9}{'tracked':>9}{'est/tr':>8}{'resident':>10}{'est/res':>8}{'time s':>8}")
    ok = True
    for size in args.sizes:
        tracked, resident = spawn(size, not args.untiled, True), spawn(size, not args.untiled, False)
        ratio = tracked["estimate"] / tracked["peak"]
        ok &= 1.0 <= ratio <= 1.25
        print(f"{size:<12}{tracked['estimate'] / MB:>9.1f}{tracked['peak'] / MB:>9.1f}{ratio:>8.2f}"
              f"{resident['peak'] / MB:>10.1f}{resident['estimate'] / resident['peak']:>8.2f}"
              f"{resident['seconds']:>8.1f}", flush=True)
    print("estimate / tracked peak within [1, 1.25]: " + ("yes" if ok else "NO"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
