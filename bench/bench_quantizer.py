"""LaPQ vs vector-quantize-pytorch's LFQ: forward+backward tokens/s and peak memory, same run.

LFQ's entropy term builds an N x 2^K matrix; LaPQ's grouped entropy builds N x G x 2^(K/G).
Each case runs in a fresh subprocess so its peak RSS is its own. Usage:
    python bench/bench_quantizer.py [--tokens 1024] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_case(kind: str, bits: int, tokens: int, repeats: int) -> dict:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)  # one thread for both: steady under load, no OpenMP oversubscription
    if kind == "lapq":
        from pyratok.lapq import LaPQ, LaPQConfig

        group = 6 if bits % 6 == 0 else 8
        model = LaPQ(LaPQConfig(latent_channels=16, num_bits=bits, bits_per_group=group, use_text=False))
        side = int(round((tokens / 4) ** 0.5))
        x = torch.randn(1, 16, 4, side, side, requires_grad=True)  # finest level: 4 * side^2 tokens

        def step():
            out = model(x)
            (out.latent.square().mean() + out.commitment + out.entropy).backward()
            return out.pyramid.num_tokens
    else:
        from vector_quantize_pytorch import LFQ

        model = LFQ(dim=bits, codebook_size=2**bits, entropy_loss_weight=0.1)
        x = torch.randn(1, tokens, bits, requires_grad=True)

        def step():
            q, _, aux = model(x)
            (q.square().mean() + aux).backward()
            return tokens

    base = rss_mb()
    n = step()  # warm-up (also the peak)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    seconds = (time.perf_counter() - start) / repeats
    return {"kind": kind, "bits": bits, "tokens": n, "tokens_per_s": n / seconds, "peak_mb": rss_mb() - base}


def measure(kind: str, bits: int, tokens: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--case", kind, str(bits), "--tokens", str(tokens), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["killed"])[-1]
        return {"kind": kind, "bits": bits, "tokens": tokens, "error": tail[:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", nargs=2, metavar=("KIND", "BITS"))
    parser.add_argument("--skip-lfq", action="store_true", help="LFQ at K=18 takes ~30 s and ~8 GB")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args.tokens, args.repeats)))
        return
    rows = [measure("lapq", 18, args.tokens, args.repeats), measure("lapq", 32, args.tokens, args.repeats)]
    if not args.skip_lfq:
        rows.append(measure("lfq", 18, args.tokens, 1))
    print(f"{'quantizer':<10}{'K':>4}{'tokens':>8}{'tokens/s':>14}{'peak MB':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['kind']:<10}{r['bits']:>4}{r['tokens']:>8}   failed: {r['error']}")
        else:
            print(f"{r['kind']:<10}{r['bits']:>4}{r['tokens']:>8}{r['tokens_per_s']:>14.0f}{r['peak_mb']:>10.1f}")
    lapq, lfq = rows[0], rows[-1]
    if lfq["kind"] == "lfq" and "error" not in lfq and "error" not in lapq:
        speed = lapq["tokens_per_s"] / lfq["tokens_per_s"]
        memory = lfq["peak_mb"] / max(lapq["peak_mb"], 1.0)
        print(f"K=18: LaPQ is {speed:.0f}x LFQ's tokens/s (target >= 1000x) "
              f"and uses 1/{memory:.0f} of its peak memory (target <= 1/20)")
    print("K=32 runs:", "error" not in rows[1])


if __name__ == "__main__":
    main()
