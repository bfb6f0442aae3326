"""Long-sequence benchmark of the generator: peak memory and time of a training step and of sampling.

PyraTok's next-scale generator at video sizes: per-level SDPA attention (the model) against the dense
(b, 1, N, N) block-causal mask it replaced (`pyratok.nextscale.reference`), each case in a fresh process.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_long.py            # ~1.5k, 6k, 24k tokens
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_long.py --huge     # + 96k tokens (new attention only)

The "plan MB" column is generator.plan's prediction for the training step (target: within 25%). The pipeline's
sampling estimate against its measured peak: bench/bench_memory_estimate.py.
Model: 6 levels (the wan2.1.yaml strides), 18 bits, 16 latent channels, width 64, depth 1, 4 heads,
cross-attention text of 8 tokens (one padded). Sampling: CFG (batch 2 inside), all 6 levels.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from bench_tiling import _reset_peak, _rss_kb  # noqa: E402 (bench/ is on the path when run as a script)
from generator import PyraTokGenerator, generate  # noqa: E402
from generator.plan import model_cost  # noqa: E402
from pyratok.lapq import LaPQ, LaPQConfig  # noqa: E402
from pyratok.nextscale import LevelAttention, bitwise_loss  # noqa: E402
from pyratok.nextscale.reference import DenseBlockCausal  # noqa: E402

CLIPS = {"1.5k": (17, 128, 128), "6k": (17, 256, 256), "24k": (17, 512, 512), "96k": (17, 1024, 1024)}
STRIDES = [(32, 32, 32), (16, 16, 16), (8, 8, 8), (4, 4, 4), (2, 2, 2), (1, 1, 1)]
DENSE_LIMIT_GB = 8.0
CASES = ("train", "sample", "sample-uncached")


def build(text_mode: str):
    torch.manual_seed(0)
    model = PyraTokGenerator(latent_channels=16, num_bits=18, num_levels=6, width=64, depth=1, heads=4,
                             text_mode=text_mode)
    quantizer = LaPQ(LaPQConfig(latent_channels=16, num_bits=18, bits_per_group=6, hidden_dim=32,
                                level_strides=STRIDES, use_text=False)).eval()
    text = torch.randn(1, 8, 384, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(1, 8, dtype=torch.bool)
    mask[:, 6:] = False
    return model, quantizer, text, mask


def latent_grid(clip) -> tuple[int, int, int]:
    frames, height, width = clip
    return (1 + (frames - 1) // 4, height // 8, width // 8)


def step(case: str, attention: str, model, quantizer, text, mask, grid):
    layout = DenseBlockCausal if attention == "dense" else LevelAttention
    if case == "train":
        g = torch.Generator().manual_seed(2)
        bits = [torch.where(torch.rand(1, *lg, 18, generator=g) < 0.5, 1.0, -1.0) for lg in quantizer.grids_for(grid)]
        inputs = quantizer.level_inputs(bits, grid)
        loss, _ = bitwise_loss(model(inputs, text, mask, layout=layout), bits)
        loss.backward()
        return sum(b.shape[1] * b.shape[2] * b.shape[3] for b in bits)
    with torch.no_grad():
        pyramid = generate(model, quantizer, text, mask, grid, guidance_scale=3.0,
                           generator=torch.Generator().manual_seed(3), use_cache=case == "sample")
    return sum(b[0].numel() // b.shape[-1] for b in pyramid.bits)


def run_case(case: str, attention: str, size: str, text_mode: str) -> dict:
    torch.set_num_threads(1)
    model, quantizer, text, mask = build(text_mode)
    if case != "train":  # generate's uncached path calls model(...): give it the layout under test
        forward = model.forward
        layout = DenseBlockCausal if attention == "dense" else LevelAttention
        model.forward = lambda *a, **kw: forward(*a, layout=layout, **kw)
    # warm-up (kernels, thread pools) on a clip smaller than any measured one: freed warm-up memory
    # kept by the allocator would otherwise hide part of the measured growth
    step(case, attention, model, quantizer, text, mask, latent_grid((5, 64, 64)))
    model.zero_grad(set_to_none=True)
    resettable = _reset_peak()
    base_kb = _rss_kb("VmRSS")
    start = time.perf_counter()
    tokens = step(case, attention, model, quantizer, text, mask, latent_grid(CLIPS[size]))
    seconds = time.perf_counter() - start
    peak_kb = _rss_kb("VmHWM")
    return {"tokens": tokens, "seconds": seconds, "peak_mb": (peak_kb - base_kb) / 1024, "resettable": resettable}


def plan_mb(size: str, text_mode: str) -> float:
    """generator.plan's prediction of a training step's peak (fp32 activations + gradients), in MB."""
    model, quantizer = build(text_mode)[:2]
    cost = model_cost(model.generator_config(), quantizer.grids_for(latent_grid(CLIPS[size])), torch.float32, 8)
    return (cost.activation_bytes(checkpointing=False) + 4 * cost.params) / 2 ** 20


def dense_estimate_gb(tokens: int, case: str) -> float:
    """The dense mask's footprint: (b, 1, n, n) bool plus SDPA's work on it (~7 bytes per entry measured)."""
    batch = 1 if case == "train" else 2
    return 7.0 * batch * tokens ** 2 / 1e9


def spawn(case: str, attention: str, size: str, text_mode: str) -> dict:
    cmd = [sys.executable, __file__, "--case", case, attention, size, "--text-mode", text_mode]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--huge", action="store_true", help="add 17x1024x1024 (~96k tokens), new attention only")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--text-mode", default="cross", choices=["cross", "prefix"])
    p.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case, args.text_mode)))
        return
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: set OMP_NUM_THREADS=1 for comparable figures")
    sizes = ["1.5k", "6k", "24k"] + (["96k"] if args.huge else [])
    print(f"text_mode={args.text_mode}; one thread; load average at start {os.getloadavg()[0]:.1f}\n")
    print(f"{'case':<16}{'clip':>14}{'tokens':>8}{'attention':>11}{'time s':>9}{'peak MB':>10}{'plan MB':>9}")
    results = {}
    for case in args.cases:
        for size in sizes:
            # cached sampling never had a dense path: the old model's KV-cache pass was already per level
            for attention in ("level",) if case == "sample" else ("level", "dense"):
                prev = results.get((case, size, "level"), {})
                tokens_est = prev.get("tokens", 0)
                if attention == "dense" and dense_estimate_gb(tokens_est, case) > DENSE_LIMIT_GB:
                    print(f"{case:<16}{'x'.join(map(str, CLIPS[size])):>14}{tokens_est:>8}{'dense':>11}"
                          f"   skipped (~{dense_estimate_gb(tokens_est, case):.0f} GB)")
                    continue
                r = spawn(case, attention, size, args.text_mode)
                results[(case, size, attention)] = r
                if "error" in r:
                    print(f"{case:<16}{size:>14}{'':>8}{attention:>11}   error: {r['error']}")
                    continue
                plan = f"{plan_mb(size, args.text_mode):>9.0f}" if (case, attention) == ("train", "level") else ""
                print(f"{case:<16}{'x'.join(map(str, CLIPS[size])):>14}{r['tokens']:>8}{attention:>11}"
                      f"{r['seconds']:>9.2f}{r['peak_mb']:>10.0f}{plan}", flush=True)
    print()
    for case in args.cases:
        a, b = results.get((case, "6k", "level"), {}), results.get((case, "24k", "level"), {})
        if "peak_mb" in a and "peak_mb" in b:
            growth = (b["peak_mb"] / a["peak_mb"]) / (b["tokens"] / a["tokens"])
            print(f"{case}: peak memory 6k -> 24k grows {growth:.2f}x linear (target <= 1.25): "
                  f"{'ok' if growth <= 1.25 else 'MISSED'}")
        d = results.get((case, "6k", "dense"), {})
        if "seconds" in a and "seconds" in d:
            print(f"{case}: at 6k, per-level {a['seconds']:.2f} s vs dense {d['seconds']:.2f} s "
                  f"({'ok' if a['seconds'] <= d['seconds'] else 'SLOWER'})")


if __name__ == "__main__":
    main()
