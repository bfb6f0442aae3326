"""Tests for video I/O: round trips, fps resampling, resizing, atomic writes and every bad-file case.

Covers pyratok/data/video_io.py (the data layer of DESIGN.md "Data flow").
"""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from pyratok.data.video_io import VideoReadError, probe_video, read_video, write_video


@pytest.mark.parametrize("kind", ["uint8", "float_numpy", "float_torch_tchw"])
def test_round_trip(tmp_path, ramp, kind):
    ref = ramp(9, 32, 48)
    frames = {"uint8": ref, "float_numpy": ref.astype(np.float32) / 255.0,
              "float_torch_tchw": torch.from_numpy(ref).permute(0, 3, 1, 2).float() / 255.0}[kind]
    path = write_video(frames, tmp_path / "clip.mp4", fps=8)
    out, meta = read_video(path)
    assert out.shape == (9, 32, 48, 3) and out.dtype == np.uint8
    assert (meta.fps, meta.num_frames, meta.height, meta.width) == (8.0, 9, 32, 48)
    assert meta.duration == pytest.approx(9 / 8)
    assert np.abs(out.astype(float) - ref).mean() < 3.0  # floats were scaled exactly once
    assert probe_video(path) == meta


def test_float_out_of_range_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_video(np.full((3, 8, 8, 3), 200.0), tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="shape"):
        write_video(np.zeros((3, 8, 8, 4), np.uint8), tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="no_such_codec"):
        write_video(np.zeros((3, 8, 8, 3), np.uint8), tmp_path / "x.mp4", codec="no_such_codec")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_odd_size_and_single_image(tmp_path, ramp):
    out, meta = read_video(write_video(ramp(5, 33, 35), tmp_path / "odd.mp4"))
    assert out.shape == (5, 33, 35, 3)
    image, _ = read_video(write_video(ramp(1, 16, 16)[0], tmp_path / "image.mp4"))
    assert image.shape == (1, 16, 16, 3)  # an image is a T=1 video


def test_atomic_write_leaves_no_temp_files(tmp_path, ramp):
    write_video(ramp(4, 16, 16), tmp_path / "a.mp4")
    write_video(ramp(6, 16, 16), tmp_path / "a.mp4")  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]
    assert read_video(tmp_path / "a.mp4")[0].shape[0] == 6


def test_fps_resampling_and_start(make_video):
    path = make_video("ramp.mp4", num_frames=24, fps=8)  # frame k has red ~ 10k + gradient
    full, _ = read_video(path)
    half, meta = read_video(path, fps=4)
    assert meta.fps == 8 and len(half) == 12
    np.testing.assert_allclose(half.astype(float), full[::2].astype(float), atol=1)
    clip, _ = read_video(path, fps=4, num_frames=3, start=2)  # output frames 2, 3, 4 -> source 4, 6, 8
    np.testing.assert_allclose(clip.astype(float), full[[4, 6, 8]].astype(float), atol=1)
    double, _ = read_video(path, fps=16, num_frames=4)  # nearest source frames 0, 1, 1, 2
    np.testing.assert_allclose(double.astype(float), full[[0, 1, 1, 2]].astype(float), atol=1)


def test_resize_and_crop(make_video):
    path = make_video("wide.mp4", num_frames=5, height=32, width=48)
    assert read_video(path, size=16)[0].shape == (5, 16, 16, 3)
    assert read_video(path, size=(20, 10))[0].shape == (5, 20, 10, 3)
    assert read_video(path, size=(16, 48))[0].shape == (5, 16, 48, 3)
    with pytest.raises(ValueError, match="size"):
        read_video(path, size=(0, 4))


def _bad_file(tmp_path, case: str, good_bytes: bytes):
    path = tmp_path / f"{case}.mp4"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        path.write_bytes(good_bytes[: len(good_bytes) // 2])
    elif case == "text":
        path.write_text("this is a text file, not a video\n" * 20)
    elif case == "audio_only":
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("aac", rate=16000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    return path  # "missing" is never created


@pytest.mark.parametrize("case,message", [
    ("missing", "not found"), ("empty", "empty"), ("truncated", "video"),
    ("text", "cannot open"), ("audio_only", "no video stream"),
])
def test_bad_files_raise_clear_errors(tmp_path, make_video, case, message):
    good = make_video("good.mp4", num_frames=12).read_bytes()
    path = _bad_file(tmp_path, case, good)
    with pytest.raises(VideoReadError, match=message) as info:
        read_video(path, num_frames=5)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


def test_one_frame_video_too_short_for_request(make_video):
    path = make_video("one.mp4", num_frames=1)
    assert read_video(path)[0].shape[0] == 1
    with pytest.raises(VideoReadError, match="1 frame") as info:
        read_video(path, num_frames=5)
    assert "one.mp4" in str(info.value)
    with pytest.raises(VideoReadError, match="start=3"):
        read_video(make_video("short.mp4", num_frames=6), num_frames=4, start=3)


@pytest.mark.parametrize("name", ["clip.mkv", "clip.avi"])
def test_other_containers(make_video, name):
    """mkv stores no frame count (estimated from duration), avi does; both must read exactly."""
    path = make_video(name, num_frames=12, fps=8)
    frames, meta = read_video(path)
    assert frames.shape == (12, 32, 32, 3) and meta.num_frames == 12 and meta.fps == 8
    clip, _ = read_video(path, num_frames=3, start=9)
    np.testing.assert_allclose(clip.astype(float), frames[9:].astype(float), atol=1)
    assert probe_video(path).num_frames == 12


def test_same_frames_give_byte_identical_mp4s(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (17, 64, 64, 3), dtype=np.uint8)  # noise: the encoder works hard
    files = [write_video(frames, tmp_path / f"{i}.mp4", fps=8).read_bytes() for i in range(4)]
    assert all(data == files[0] for data in files)
    assert b" threads=1 " in files[0]  # x264's own record of its options: one thread, so no timing dependence
