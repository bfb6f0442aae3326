"""Pictures of zero-shot understanding: score curves, heatmap overlays, similarity matrices.

Shows what PyraTok's token–text similarity (§5 zero-shot tasks) finds, for the `locate` command and the
understanding benchmark. Frames are uint8 (T, H, W, 3); heatmaps are float (T, H, W) in [0, 1].
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def overlay(frames: np.ndarray, heat, alpha: float = 0.5, cmap: str = "inferno") -> np.ndarray:
    """Blend a colour-mapped heatmap (T, H, W) over frames (T, H, W, 3) uint8 -> uint8 (T, H, W, 3)."""
    from matplotlib import colormaps

    heat = np.clip(_numpy(heat), 0.0, 1.0)
    if heat.shape != frames.shape[:3]:
        raise ValueError(f"heatmap {heat.shape} does not match frames {frames.shape[:3]}")
    colour = colormaps[cmap](heat)[..., :3] * 255.0  # (T, H, W, 3)
    mixed = (1 - alpha) * frames.astype(np.float32) + alpha * colour
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def save_score_curve(scores, path: str | Path, threshold: float | None = None, segments: Sequence = (),
                     presence=None, title: str = "", fps: float | None = None) -> Path:
    """Score per frame, the threshold, predicted segments (shaded) and, if given, ground-truth presence (T,)."""
    plt = _pyplot()
    y = _numpy(scores)
    x = np.arange(y.size)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.step(x, y, where="mid", color="tab:blue", label="score")
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    for i, seg in enumerate(segments):
        ax.axvspan(seg[0] - 0.5, seg[1] - 0.5, color="tab:orange", alpha=0.25, label="predicted" if i == 0 else None)
    if presence is not None:
        lo, hi = float(y.min()), float(y.max())
        gt = lo + (hi - lo + 1e-6) * _numpy(presence).astype(np.float32)
        ax.step(x, gt, where="mid", color="tab:green", lw=1.5, ls=":", label="present (label)")
    ax.set_xlabel("frame" if not fps else f"frame ({fps:g} fps)")
    ax.set_ylabel("token–text cosine")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def save_similarity_matrix(scores, path: str | Path, title: str = "", xlabel: str = "video",
                           ylabel: str = "text query") -> Path:
    """(q, g) matrix as a heatmap (rows: queries, columns: gallery)."""
    plt = _pyplot()
    m = _numpy(scores)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    im = ax.imshow(m, cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def save_image_grid(rows: Sequence[tuple[str, np.ndarray]], path: str | Path, title: str = "") -> Path:
    """Rows of frames side by side: each row is (label, uint8 (n, H, W, 3)), all with the same n, H, W."""
    plt = _pyplot()
    strips = [np.concatenate(list(frames), axis=1) for _, frames in rows]  # each (H, n*W, 3)
    grid = np.concatenate(strips, axis=0)
    height = strips[0].shape[0]
    fig, ax = plt.subplots(figsize=(min(16, 1 + grid.shape[1] / 48), 0.5 + grid.shape[0] / 48))
    ax.imshow(grid, interpolation="nearest")
    ax.set_yticks([height * (i + 0.5) for i in range(len(rows))], [label for label, _ in rows], fontsize=7)
    ax.set_xticks([])
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
