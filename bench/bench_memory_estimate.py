"""How the pipeline's up-front memory estimate compares with the peak it guards: the refusal of sizes
that cannot fit (pipelines/pipeline_checks.py) must never refuse a call that would have fitted.

Each size runs in a fresh subprocess with the shipped model; the measured figure is the peak resident memory
(VmHWM) over what the loaded pipeline already held. The estimate must stay below it (a lower bound).

    .venv/bin/python bench/bench_memory_estimate.py                       # 17x256x256 and 129x64x64, ~1 min
    .venv/bin/python bench/bench_memory_estimate.py --sizes 17x128x128 33x64x64
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE = """
import json, sys, torch
from pipelines.pipeline_checks import estimate_peak_bytes
from pipelines.pipeline_pyratok_t2v import load_pipeline
from pyratok import default_model_path
f, h, w = map(int, sys.argv[1:4])
pipe = load_pipeline(default_model_path())
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
base = status("VmRSS")
pipe("a red circle moving left", num_frames=f, height=h, width=w, generator=torch.Generator().manual_seed(0),
     output_type="np")
print(json.dumps({"measured": status("VmHWM") - base, "estimate": estimate_peak_bytes(pipe, 1, f, h, w, True)}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["17x256x256", "129x64x64"], help="FRAMESxHEIGHTxWIDTH")
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    ok = True
    for size in args.sizes:
        out = subprocess.run([sys.executable, "-c", CASE, *size.split("x")], env=env, capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        result = json.loads(out)
        ratio = result["estimate"] / result["measured"]
        ok &= ratio <= 1.0
        print(f"{size}: measured {result['measured'] / 2**20:.0f} MiB, estimate {result['estimate'] / 2**20:.0f} MiB "
              f"(estimate / measured {ratio:.2f}, must be <= 1)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
