"""Pictures of training: inputs beside reconstructions, and codebook utilization per level.

Supports the tokenizer training of PyraTok (§4) with PNGs people can look at; the numbers
behind them go to TensorBoard.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(x, "c t h w -> t h w c").cpu().numpy()


def save_recon_grid(video: torch.Tensor, recon: torch.Tensor, path: str | Path, max_videos: int = 4, max_frames: int = 9) -> Path:
    """Rows: for each video, its input frames above its reconstructed frames. video/recon: (b, 3, T, H, W)."""
    rows = []
    for v, r in zip(video[:max_videos], recon[:max_videos]):
        step = max(1, v.shape[1] // max_frames)
        for frames in (to_uint8_frames(v[:, ::step][:, :max_frames]), to_uint8_frames(r[:, ::step][:, :max_frames])):
            rows.append(np.concatenate(list(frames), axis=1))  # (H, T*W, 3)
    grid = np.concatenate(rows, axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def plot_utilization(history: dict[int, dict[str, float]], path: str | Path) -> Path:
    """Line plot of `utilization/levelN` over steps; history maps step -> metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(history)
    keys = sorted({k for m in history.values() for k in m if k.startswith("utilization/")})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for k in keys:
        ax.plot(steps, [history[s].get(k, np.nan) for s in steps], label=k.split("/")[-1])
    ax.set_xlabel("step")
    ax.set_ylabel("share of group codes used")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
