"""Tiled-decoding benchmark: peak memory, time and fidelity of `pyratok.tiling.tiled_decode`.

Compares against the untiled `vae.decode` and diffusers' own tiled decode (the peer) on the tiny random
Wan backbone, each case in a fresh subprocess so its peak resident memory is its own.

    .venv/bin/python bench/bench_tiling.py                            # 512 and 1080p (~6-9 min, 2 cores)
    .venv/bin/python bench/bench_tiling.py --sizes 512 1080p 4K 8K    # + 4K (~7 min) and 8K (~5 min), tiled only
    .venv/bin/python bench/bench_tiling.py --sizes 1080p --tile 512 --stride 448

Every case runs with OMP_WAIT_POLICY=PASSIVE unless set: on a CPU shared with other jobs, spinning
OpenMP threads stall at every barrier (a 32x40 decode took 2.3 s instead of 0.15 s here), which punishes
the many smaller ops of a tiled decode far more than the untiled one.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SIZES = {"512": (512, 512, 5), "1080p": (1080, 1920, 5), "4K": (2160, 3840, 5), "8K": (4320, 7680, 1)}
TARGET_PEAK_GB, TARGET_PSNR_DB, TARGET_OVERHEAD = 1.0, 40.0, 0.25


def build_vae(num_res_blocks: int):
    """The tokenizer's tiny backbone with seeded random weights (enough for memory/time/consistency)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=16, z_dim=8, dim_mult=[1, 2, 4, 4], num_res_blocks=num_res_blocks,
                           temperal_downsample=[False, True, True])
    return vae.eval()


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM (Linux >= 4.0); False if not allowed (then ru_maxrss, which cannot be reset, is used)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_case(mode: str, height: int, width: int, frames: int, args: argparse.Namespace) -> dict:
    """Inside a fresh process: decode once, return wall time and peak RSS growth; save the video if asked."""
    from pyratok.tiling import TilingConfig, tiled_decode

    torch.set_num_threads(2)
    vae = build_vae(args.num_res_blocks)
    t = 1 + (frames - 1) // 4
    z = torch.randn(1, 8, t, height // 8, width // 8, generator=torch.Generator().manual_seed(1))
    config = TilingConfig(args.tile, args.tile, args.stride, args.stride, first_frame_batch=args.first_frame_batch)
    with torch.inference_mode():
        vae.decode(torch.randn(1, 8, 2, 8, 8))  # load kernels / thread pool outside the measurement
        if mode == "diffusers":
            vae.enable_tiling()  # its defaults: 256-px tiles, 192-px stride
        decode = {
            "untiled": lambda: vae.decode(z).sample,
            "diffusers": lambda: vae.decode(z).sample,
            "tiled": lambda: tiled_decode(vae, z, config),
        }[mode]
        resettable = _reset_peak()
        base_kb = _rss_kb("VmRSS") if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        video = decode()
        seconds = time.perf_counter() - start
        peak_kb = _rss_kb("VmHWM") if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.save:
        torch.save(video, args.save)
    return {"seconds": seconds, "peak_bytes": (peak_kb - base_kb) * 1024,
            "out_bytes": video.numel() * video.element_size(), "shape": list(video.shape)}


def spawn(mode: str, size: str, args: argparse.Namespace, save: str | None) -> dict:
    cmd = [sys.executable, __file__, "--case", mode, size, "--tile", str(args.tile), "--stride", str(args.stride),
           "--first-frame-batch", str(args.first_frame_batch), "--num-res-blocks", str(args.num_res_blocks)]
    if save:
        cmd += ["--save", save]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def psnr(a_path: str, b_path: str) -> float:
    a, b = torch.load(a_path, weights_only=True), torch.load(b_path, weights_only=True)
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()  # range [-1, 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["512", "1080p"], choices=list(SIZES))
    p.add_argument("--tile", type=int, default=None, help="tile_sample_min_height/width (default: TilingConfig's)")
    p.add_argument("--stride", type=int, default=None, help="tile_sample_stride_height/width")
    p.add_argument("--first-frame-batch", type=int, default=None)
    p.add_argument("--num-res-blocks", type=int, default=1)
    p.add_argument("--case", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    from pyratok.tiling import TilingConfig

    default = TilingConfig()
    args.tile = args.tile or default.tile_sample_min_height
    args.stride = args.stride or default.tile_sample_stride_height
    args.first_frame_batch = args.first_frame_batch or default.first_frame_batch
    if args.case:
        print(json.dumps(run_case(args.case[0], *SIZES[args.case[1]], args)))
        return

    print(f"tiny Wan (base_dim 16, z_dim 8, num_res_blocks {args.num_res_blocks}), random weights, "
          f"2 threads; tiled_decode tile {args.tile} px, stride {args.stride} px, "
          f"first_frame_batch {args.first_frame_batch}; peer: diffusers enable_tiling() (256/192) at 1080p")
    print(f"load average at start: {os.getloadavg()[0]:.1f} (other jobs on this machine slow every row); "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}\n")
    header = f"{'size':>6} {'frames':>6} {'mode':>9} {'time s':>8} {'x untiled':>9} {'peak-out GB':>11} " \
             f"{'x untiled':>9} {'out GB':>7} {'PSNR dB':>8}"
    print(header)
    print("-" * len(header))
    checks, tmp = [], tempfile.mkdtemp(prefix="bench_tiling_")
    for size in args.sizes:
        height, width, frames = SIZES[size]
        modes = ["untiled", "tiled"] if size in ("512", "1080p") else ["tiled"]
        if size == "1080p":
            modes.append("diffusers")
        results = {}
        for mode in modes:
            save = os.path.join(tmp, f"{size}_{mode}.pt") if size in ("512", "1080p") else None
            results[mode] = r = spawn(mode, size, args, save)
            if "error" in r:
                print(f"{size:>6} {frames:>6} {mode:>9}  failed: {r['error']}")
                continue
            beyond = (r["peak_bytes"] - r["out_bytes"]) / 1e9
            ref = results.get("untiled", {})
            t_ratio = f"{r['seconds'] / ref['seconds']:.2f}" if "seconds" in ref and mode != "untiled" else ""
            m_ratio = f"{r['peak_bytes'] / ref['peak_bytes']:.3f}" if "peak_bytes" in ref and mode != "untiled" else ""
            db = psnr(save, results["untiled"]["save"]) if save and mode != "untiled" and "seconds" in ref else None
            r["save"] = save
            print(f"{size:>6} {frames:>6} {mode:>9} {r['seconds']:>8.1f} {t_ratio:>9} {beyond:>11.3f} "
                  f"{m_ratio:>9} {r['out_bytes'] / 1e9:>7.3f} {'' if db is None else f'{db:.1f}':>8}")
            if mode == "tiled":
                checks.append((f"{size} peak beyond output <= {TARGET_PEAK_GB} GB", beyond <= TARGET_PEAK_GB,
                               f"{beyond:.3f} GB"))
                if db is not None:
                    checks.append((f"{size} PSNR >= {TARGET_PSNR_DB} dB", db >= TARGET_PSNR_DB, f"{db:.1f} dB"))
                if t_ratio:
                    over = r["seconds"] / ref["seconds"] - 1
                    checks.append((f"{size} time overhead <= {TARGET_OVERHEAD:.0%}", over <= TARGET_OVERHEAD,
                                   f"{over:+.0%}"))
        for path in (os.path.join(tmp, f"{size}_{m}.pt") for m in modes):
            if os.path.exists(path):
                os.remove(path)
    os.rmdir(tmp)
    print("\npeak-out = peak resident growth during the decode minus the output tensor itself")
    for name, ok, value in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {name}: {value}")


if __name__ == "__main__":
    main()
