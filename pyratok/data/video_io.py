"""Video reading and writing with PyAV: fps resampling, resize + centre crop, atomic writes.

Data layer of the design (DESIGN.md "Data flow"): every clip enters and leaves the framework here.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from einops import rearrange

_CRF_CODECS = ("libx264", "libx265", "libvpx-vp9", "libaom-av1")


class VideoReadError(ValueError):
    """A video file cannot be read as asked; the message names the file and the problem."""


@dataclass(frozen=True)
class VideoMeta:
    """Facts about the *source* file (native fps and size), not about the returned frames."""

    fps: float
    num_frames: int
    height: int
    width: int
    duration: float  # seconds
    path: str


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise VideoReadError(f"{path}: file not found")
    if not path.is_file():
        raise VideoReadError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: file is empty (0 bytes)")
    try:
        container = av.open(str(path))
    except Exception as err:  # av raises many FFmpegError subclasses; all mean "not a video"
        raise VideoReadError(f"{path}: cannot open as a video container ({type(err).__name__}: {err})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        found = f"only {', '.join(kinds)} streams" if kinds else "no streams at all (truncated or not a media file?)"
        raise VideoReadError(f"{path}: container has no video stream ({found})")
    return container


def _stream_fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe_video(path: str | os.PathLike) -> VideoMeta:
    """Metadata without decoding pixels (frame count decoded only if the container lacks it)."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        n = int(stream.frames or 0)
        if n <= 0:
            n = sum(1 for _ in container.decode(stream))
        return _meta(path, stream, n)
    except VideoReadError:
        raise
    except Exception as err:
        raise VideoReadError(f"{path}: cannot read video stream ({type(err).__name__}: {err})") from None
    finally:
        container.close()


def _meta(path: Path, stream, n: int) -> VideoMeta:
    """Read from an *open* container's stream (a closed container's stream must not be touched)."""
    fps = _stream_fps(stream) or 1.0
    h, w = stream.codec_context.height, stream.codec_context.width
    return VideoMeta(fps=fps, num_frames=n, height=h, width=w, duration=n / fps, path=str(path))


def _resize_plan(h: int, w: int, size: int | tuple[int, int] | None) -> tuple[int, int, int, int, int, int]:
    """(resized_h, resized_w, top, left, out_h, out_w) for 'resize to cover, then centre crop'."""
    if size is None:
        return h, w, 0, 0, h, w
    if isinstance(size, (int, np.integer)):
        out_h = out_w = int(size)
        scale = size / min(h, w)  # short side to `size`, then a square crop
    else:
        if len(size) != 2:
            raise ValueError(f"size must be an int or (height, width), got {size!r}")
        out_h, out_w = int(size[0]), int(size[1])
        scale = max(out_h / h, out_w / w)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    rh, rw = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    return rh, rw, (rh - out_h) // 2, (rw - out_w) // 2, out_h, out_w


def _source_indices(n_src: int, src_fps: float, fps: float | None, start: int, num_frames: int | None) -> np.ndarray:
    """Source frame index for each output frame: nearest source frame at time (start + k) / fps."""
    step = 1.0 if fps is None else src_fps / fps  # source frames per output frame
    n_out = int(np.floor((n_src - 1) / step + 1e-6)) + 1  # output frames the source covers
    count = n_out - start if num_frames is None else num_frames
    if start < 0 or count <= 0 or start + count > n_out:
        want = "all" if num_frames is None else num_frames
        raise ValueError(f"has {n_out} frame(s) at {fps or src_fps:g} fps; requested {want} from start={start}")
    k = np.arange(start, start + count)
    return np.minimum(np.floor(k * step + 0.5).astype(np.int64), n_src - 1)


def _decode(container, path: Path, wanted: set[int] | None, stop: int | None, convert) -> tuple[dict, int]:
    """One pass over an open container: convert the frames in `wanted` (all if None), stop after `stop`.

    Returns ({index: rgb frame}, number of frames decoded). A corrupt tail ends the pass early.
    """
    rgb, count = {}, 0
    try:
        for frame in container.decode(container.streams.video[0]):
            if wanted is None or count in wanted:
                rgb[count] = convert(frame)
            count += 1
            if stop is not None and count > stop:
                break
    except Exception as err:
        if count == 0:
            raise VideoReadError(f"{path}: cannot decode any frame ({type(err).__name__}: {err})") from None
        # truncated tail: keep what was decoded; the caller's length check decides
    if count == 0:
        raise VideoReadError(f"{path}: video stream contains no decodable frames (truncated or corrupt)")
    return rgb, count


def read_video(
    path: str | os.PathLike,
    num_frames: int | None = None,
    fps: float | None = None,
    size: int | tuple[int, int] | None = None,
    start: int = 0,
) -> tuple[np.ndarray, VideoMeta]:
    """Decode a clip as uint8 frames (T, H, W, 3) plus the source's `VideoMeta`.

    fps: resample to this rate by picking the nearest source frame (constant frame rate assumed);
    None keeps the native rate. size: int -> short side to `size` then centre-crop a square;
    (H, W) -> resize to cover then centre crop. start: first output frame, counted at the output fps.
    num_frames: None returns every frame from `start`; too few frames raises `VideoReadError`.
    Only the frames used are converted to RGB, and decoding stops after the last one needed.
    """
    path = Path(path)
    if num_frames is not None and num_frames <= 0:
        raise ValueError(f"num_frames must be positive or None, got {num_frames!r}")
    if fps is not None and fps <= 0:
        raise ValueError(f"fps must be positive or None, got {fps!r}")
    container = _open(path)
    try:
        stream = container.streams.video[0]
        src_fps = _stream_fps(stream) or float(fps or 1.0)
        h, w = stream.codec_context.height, stream.codec_context.width
        if h <= 0 or w <= 0:
            raise VideoReadError(f"{path}: video stream has no frame size ({w}x{h})")
        seconds = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
        seconds = seconds or (container.duration or 0) / av.time_base  # mkv/webm: only the container knows
        declared = int(stream.frames or 0) or round(seconds * src_fps)  # container's count, or an estimate
        source = _meta(path, stream, declared)
        rh, rw, top, left, out_h, out_w = _resize_plan(h, w, size)
        interp = "AREA" if rh * rw < h * w else "BILINEAR"

        def convert(frame) -> np.ndarray:  # swscale converts to RGB and resizes in one pass: (rh, rw, 3)
            return frame.to_ndarray(format="rgb24", width=rw, height=rh, interpolation=interp)

        try:  # plan from the container's frame count; fall back to the decoded count when it is wrong
            idx = _source_indices(declared, src_fps, fps, start, num_frames) if declared > 0 else None
        except ValueError:
            idx = None
        stop = None if idx is None or num_frames is None else int(idx[-1])
        rgb, count = _decode(container, path, None if idx is None else set(idx.tolist()), stop, convert)
    finally:
        container.close()
    stopped_early = stop is not None and count > stop
    if not stopped_early and (idx is None or count != declared):
        try:
            idx = _source_indices(count, src_fps, fps, start, num_frames)
        except ValueError as err:
            raise VideoReadError(f"{path}: {err}") from None
        if not set(idx.tolist()) <= rgb.keys():  # rare: metadata was wrong, decode again for these frames
            container = _open(path)
            try:
                rgb, _ = _decode(container, path, set(idx.tolist()), int(idx[-1]), convert)
            finally:
                container.close()
    n_src = declared if stopped_early else count
    meta = replace(source, num_frames=n_src, duration=n_src / source.fps)
    frames = np.stack([rgb[i] for i in idx.tolist()])  # (T, rh, rw, 3)
    return np.ascontiguousarray(frames[:, top : top + out_h, left : left + out_w]), meta


def _to_uint8_frames(frames) -> np.ndarray:
    """Accept uint8/float (T,H,W,3) numpy or torch, or torch (T,3,H,W); floats must be in [0, 1]."""
    if hasattr(frames, "detach"):  # torch tensor, imported lazily to keep this module torch-free
        is_channels_first = frames.ndim == 4 and frames.shape[1] == 3 and frames.shape[-1] != 3
        frames = frames.detach().cpu()
        if frames.is_floating_point():
            frames = frames.float()
        frames = frames.numpy()
        if is_channels_first:
            frames = rearrange(frames, "t c h w -> t h w c")
    frames = np.asarray(frames)
    if frames.ndim == 3 and frames.shape[-1] == 3:
        frames = frames[None]  # one image (H, W, 3) is a T=1 video
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3) (or torch (T, 3, H, W)), got {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("frames is empty (T = 0)")
    if frames.dtype == np.uint8:
        return frames
    if np.issubdtype(frames.dtype, np.floating):
        lo, hi = float(frames.min()), float(frames.max())
        if lo < -0.5 or hi > 1.5:
            raise ValueError(f"float frames must be in [0, 1], got range [{lo:.3g}, {hi:.3g}] "
                             "(convert [-1, 1] or [0, 255] data first)")
        return np.round(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)  # the one and only scaling
    raise ValueError(f"frames dtype must be uint8 or floating point, got {frames.dtype}")


def write_video(frames, path: str | os.PathLike, fps: float = 8, codec: str = "libx264", crf: int = 18) -> Path:
    """Encode frames to `path` atomically (temp file in the same folder, then `os.replace`).

    frames: uint8 (T, H, W, 3), float in [0, 1] (scaled to 0..255 exactly once), numpy or torch;
    torch (T, 3, H, W) is accepted too. Even sizes use yuv420p (plays everywhere); odd sizes use
    yuv444p so the exact size survives a round trip (libx264 High 4:4:4; some players refuse it).
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    data = _to_uint8_frames(frames)
    _, h, w, _ = data.shape
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # hidden sibling with the same suffix (the muxer is chosen from it); created with normal permissions
    tmp = str(path.parent / f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}{path.suffix or '.mp4'}")
    try:
        with av.open(tmp, mode="w") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = w, h
            even = h % 2 == 0 and w % 2 == 0
            stream.pix_fmt = "yuv420p" if even else "yuv444p"
            if codec in _CRF_CODECS:
                stream.options = {"crf": str(crf)}
            # one encoder thread: libx264's frame threads make the bytes depend on timing, and the same
            # frames must give the same file (a resumed batch equals an uninterrupted one, file for file)
            stream.codec_context.thread_count = 1
            for image in data:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))  # flush the encoder
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, Exception):  # encoder/muxer failures: one clear message, not an av traceback
            raise ValueError(f"{path}: cannot write video with codec {codec!r} at {w}x{h} "
                             f"({type(err).__name__}: {err})") from None
        raise
    return path
