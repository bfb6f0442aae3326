"""Tests for the `pyratok` command line, called in-process through `main([...])`.

Covers pipelines/cli.py: `shapes`, `info`, `demo` and error handling.
"""
from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest

from pipelines.cli import COMMANDS, build_parser, environment_info, main
from pyratok.data.folder import VideoTextDataset
from pyratok.data.shapes import HELDOUT_PAIRS, ShapesDataset, video_to_uint8
from pyratok.data.video_io import read_video


def test_shapes_command_writes_clips_and_labels(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["shapes", "--n", "3", "--out", str(out), "--seed", "5", "--num-frames", "9",
                 "--height", "32", "--width", "32"]) == 0
    assert "wrote 3" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == [f"train_{i:06d}.mp4" for i in range(3)]
    reference = ShapesDataset(length=3, num_frames=9, height=32, width=32, seed=5)
    for i, record in enumerate(records):
        sample = reference[i]
        assert {k: record[k] for k in ("caption", "colour", "shape", "motion")} == {
            k: sample[k] for k in ("caption", "colour", "shape", "motion")}
        assert np.allclose(record["boxes"], sample["boxes"].numpy(), atol=0.01)
        assert "masks" not in record and record["presence"] == [[True] * 9]
        frames, meta = read_video(out / record["file"])
        assert frames.shape == (9, 32, 32, 3) and meta.fps == 8
        assert np.abs(frames.astype(float) - video_to_uint8(sample["video"])).mean() < 3
    folder = VideoTextDataset(out, num_frames=9, size=32, temporal_crop="centre")
    assert folder[2]["caption"] == records[2]["caption"] and folder[2]["video"].shape == (3, 9, 32, 32)


def test_shapes_command_heldout_multi_object(tmp_path):
    out = tmp_path / "held"
    assert main(["shapes", "--n", "2", "--split", "heldout", "--objects", "2", "--out", str(out),
                 "--num-frames", "5", "--height", "16", "--width", "16"]) == 0
    for line in (out / "captions.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert len(record["objects"]) == 2 and len(record["presence"]) == 2
        assert all((o["colour"], o["shape"]) in HELDOUT_PAIRS for o in record["objects"])


@pytest.fixture(scope="module")
def environment():
    """Gathered once, outside capsys, so DeepSpeed's import-time log handler binds to pytest's own stdout."""
    return environment_info()


def test_info_command(environment, capsys):
    assert environment["deepspeed_importable"] in (True, False)
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("python", "torch", "diffusers", "transformers", "accelerate", "device", "cuda_available",
                "xformers_usable", "deepspeed_importable"):
        assert key in info
    assert info["xformers_usable"] is False or info["cuda_available"] is True
    assert main(["info"]) == 0
    assert "torch" in capsys.readouterr().out


def _has_default_model() -> bool:
    from pyratok.default_model import default_model_path

    try:
        return default_model_path().is_dir()
    except FileNotFoundError:
        return False


def test_demo_command(tmp_path, capsys):
    """With the shipped model the demo generates; without it, it writes the described Shapes clip and says so."""
    assert main(["demo", "--out", str(tmp_path)]) == 0
    size = 64  # the Shapes clip written without a model
    if _has_default_model():
        from pyratok.default_model import default_model_path

        size = json.loads((default_model_path() / "model_index.json").read_text())["sample_size"]
    assert read_video(tmp_path / "demo.mp4")[0].shape == (17, size, size, 3)
    assert (tmp_path / "demo.png").stat().st_size > 0
    if not _has_default_model():
        assert "no trained default model yet" in capsys.readouterr().out


def test_errors_are_one_line_and_parser_is_extensible(tmp_path, capsys):
    assert main(["shapes", "--n", "0", "--out", str(tmp_path)]) == 1
    assert "--n must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert {"shapes", "info", "demo"} <= set(COMMANDS)
    assert build_parser().parse_args(["shapes", "--n", "1", "--out", "x"]).command == "shapes"


def _parsers() -> dict:
    """Every command line of the project: the `pyratok` subcommands and the `python -m` tools."""
    from generator import build_cache
    from pipelines import assemble, evaluate_shapes

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {**sub.choices, "generator.build_cache": build_cache.build_parser(),
            "pipelines.evaluate_shapes": evaluate_shapes.build_parser(), "pipelines.assemble": assemble.build_parser()}


@pytest.mark.parametrize("name", [*sorted(COMMANDS), "generator.build_cache", "pipelines.evaluate_shapes",
                                  "pipelines.assemble"])
def test_every_flag_has_help_that_shows_its_default(name):
    command = _parsers()[name]
    text = command.format_help().split("options:")[1]
    for action in command._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name}: {action.option_strings or action.dest} has no help text"
        if action.option_strings and not action.required:
            start = re.search(rf"\n  {re.escape(action.option_strings[0])}[ ,\n]", text).start()
            entry = text[start + 1:].split("\n  -")[0]  # this flag's lines of the help
            assert "default:" in entry, f"{name} {action.option_strings[-1]} hides its default"


def test_load_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    broken = tmp_path / "pipe"
    broken.mkdir()
    index = {"_class_name": "PyraTokT2VPipeline", "vae": ["pyratok.tokenizer", "PyraTokTokenizer"],
             "transformer": ["generator.model", "PyraTokGenerator"]}  # but no vae/ or transformer/ folder
    (broken / "model_index.json").write_text(json.dumps(index))
    argv = ["generate", "a", "-o", str(tmp_path / "a.mp4"), "--model", str(broken)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("pyratok generate: error: ") and "--debug" in err
    with pytest.raises(Exception):
        main([*argv, "--debug"])
