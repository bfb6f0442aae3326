"""Tokenizer training: a short overfit, and a two-process `accelerate launch` run resumed from its checkpoint."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pyratok.data.shapes import ShapesDataset
from pyratok.objective import LossWeights, TokenizerObjective
from pyratok.tokenizer import PyraTokTokenizer

MICRO_MODEL = {
    "backbone": {"base_dim": 8, "z_dim": 4, "num_res_blocks": 1},
    "quantizer": {"hidden_dim": 32, "num_bits": 16, "bits_per_group": 4,
                  "level_strides": [[4, 4, 4], [2, 2, 2], [1, 1, 1]]},
    "alignment": {"embed_dim": 16, "hidden_dim": 16},
    "prior": {"width": 32, "depth": 1, "heads": 2},
    "text_dim": 384,
}


def test_overfit_one_shapes_clip_halves_reconstruction_loss():
    torch.manual_seed(0)
    model = PyraTokTokenizer(**{f"{k}_config" if k != "text_dim" else k: v for k, v in MICRO_MODEL.items()})
    objective = TokenizerObjective(model, LossWeights(align=0.0, ar=0.05))
    clip = ShapesDataset(split="train", num_frames=5, height=32, width=32, length=1, seed=3)[0]["video"][None]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        terms, _ = objective(clip)
        rec = terms["l1"] + 0.2 * (1 - terms["ssim"])
        losses.append(float(rec))
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    assert min(losses[-3:]) <= 0.5 * losses[0], losses


def _write_config(path: Path, out: Path) -> Path:
    cfg = {
        "model": MICRO_MODEL,
        "data": {"shapes_weight": 1.0, "num_frames": 5, "height": 32, "width": 32, "length": 64},
        "train": {"output_dir": str(out), "steps": 2, "batch_size": 1, "log_every": 1,
                  "image_every": 100, "save_every": 1, "warmup_steps": 1,
                  "write_param_checksum": True},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(config: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "pyratok.train", "--config", str(config), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_process_run_resumes_from_checkpoint(tmp_path):
    out = tmp_path / "run"
    config = _write_config(tmp_path / "micro.yaml", out)
    first = _launch(config)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    sums = [(out / f"param_checksum_rank{r}.txt").read_text() for r in (0, 1)]
    assert sums[0] == sums[1], "DDP ranks ended with different parameters"
    second = _launch(config, "--resume_from_checkpoint", "latest", "--set", "train.steps=3", "--set", "train.log_every=1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout + second.stderr and "at step 2" in second.stdout + second.stderr
    assert (out / "checkpoints" / "checkpoint-3").is_dir()
    saved = (out / "config.yaml").read_text()  # repeated --set flags all apply
    assert "steps: 3" in saved and "log_every: 1" in saved
    again = PyraTokTokenizer.from_pretrained(out / "tokenizer")
    assert again.quantizer.config.num_bits == 16
    assert list((out / "logs").rglob("events.out.tfevents*")), "TensorBoard logs missing"
