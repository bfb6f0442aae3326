"""Kill / resume experiments: SIGKILL a training run at a chosen step, resume with `latest`, compare.

Exercises PyraTok's training scaffold (pyratok.training) through the real command lines: for the
tokenizer (configs/tokenizer/tiny.yaml on 5x32x32 clips) and the generator (configs/generator/tiny.yaml on a 16-clip token cache of
the shipped tokenizer), one run straight through and one killed right after checkpoint-K was written,
then resumed; prints the loss of step K+1 in both and the largest weight difference of the exports.
    python bench/kill_resume.py [--out runs/kill_resume] [--steps 12] [--kill-after 8]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
TOKENIZER_SETS = ["data.num_frames=5", "data.height=32", "data.width=32", "data.length=10", "train.batch_size=2",
                  "train.gradient_accumulation_steps=2", "train.save_every=1", "train.log_every=1",
                  "train.image_every=1000", "train.warmup_steps=2", "train.vae_steps=3", "train.vae_sample=true",
                  "train.text_dropout=0.5"]


def losses(run: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for events in sorted((run / "logs").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "loss" in acc.Tags().get("scalars", []):
            out |= {e.step: e.value for e in acc.Scalars("loss")}
    return out


def run(cmd: list[str], kill_after: int | None = None, out: Path | None = None) -> float:
    """Run `cmd`; with kill_after, SIGKILL it as soon as checkpoint-<kill_after> exists. -> seconds."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        target = out / "checkpoints" / f"checkpoint-{kill_after}"
        while proc.poll() is None and not target.is_dir():
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    if kill_after is None and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return time.monotonic() - t0


def experiment(name: str, base: list[str], export: Path, out: Path, steps: int, kill_after: int) -> None:
    straight, killed = out / "straight", out / "killed"
    seconds = run([*base, f"train.output_dir={straight}", f"train.max_steps={steps}"])
    cmd = [*base, f"train.output_dir={killed}", f"train.max_steps={steps}"]
    run(cmd, kill_after, killed)
    left = sorted(p.name for p in (killed / "checkpoints").iterdir())
    run([*cmd, "--resume_from_checkpoint", "latest"])
    a, b = load_file(str(straight / export)), load_file(str(killed / export))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    la, lb = losses(straight), losses(killed)
    step = kill_after + 1
    print(f"{name}: {steps} steps ({seconds:.0f} s straight); killed after checkpoint-{kill_after} "
          f"(left: {', '.join(left)}); loss at step {step}: straight {la.get(step, float('nan')):.6f}, "
          f"resumed {lb.get(step, float('nan')):.6f}; max |weight difference| of the exports {diff:.3g}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/kill_resume")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--kill-after", type=int, default=8)
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    experiment("tokenizer", [sys.executable, "-m", "pyratok.train", "--config", "configs/tokenizer/tiny.yaml", "--set",
                             *TOKENIZER_SETS],
               Path("tokenizer/diffusion_pytorch_model.safetensors"), out / "tokenizer", args.steps, args.kill_after)
    cache = out / "token_cache"
    subprocess.run([sys.executable, "-m", "generator.build_cache", "--tokenizer",
                    str(ROOT / "checkpoints/pyratok-shapes-tiny/vae"), "--out", str(cache), "--n", "16",
                    "--num-frames", "9"], cwd=ROOT, env=ENV, check=True, capture_output=True)
    experiment("generator", [sys.executable, "-m", "generator.train", "--config", "configs/generator/tiny.yaml", "--set",
                             f"data.token_cache_dir={cache}", "model.num_bits=32", "train.batch_size=4",
                             "train.gradient_accumulation_steps=2", "train.save_every=1", "train.log_every=1",
                             "train.self_correction_prob=0.1"],
               Path("generator/diffusion_pytorch_model.ema.safetensors"), out / "generator", args.steps, args.kill_after)


if __name__ == "__main__":
    main()
