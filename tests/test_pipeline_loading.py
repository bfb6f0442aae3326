"""Tests for loading PyraTok pipeline folders the diffusers way, old folders, and damaged weights.

`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` (the README's call), the class's own
loader without the flag, folders with the old component names, and non-finite weights refused at load.
"""
from __future__ import annotations

import ast
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline
from test_pipeline import SMALL, gens, make_pipe

from pipelines.pipeline_pyratok_t2v import PyraTokT2VPipeline
from pyratok.default_model import default_model_folder

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    pipe = make_pipe()
    folder = tmp_path_factory.mktemp("pipe") / "pipe"
    pipe.save_pretrained(folder)
    reference = pipe("a red circle", generator=gens(3), output_type="latent", **SMALL).frames
    return folder, reference


def _latent(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a red circle", generator=gens(3), output_type="latent", **SMALL).frames


def test_diffusion_pipeline_from_pretrained_returns_the_pipeline(saved):
    folder, reference = saved
    assert (folder / "pipeline_pyratok.py").read_text().count("\n") <= 4
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)  # the README's call
    assert type(pipe) is PyraTokT2VPipeline
    assert sorted(pipe.components) == ["refiner", "text_encoder", "tokenizer", "transformer", "vae"]
    assert pipe.refiner is None  # optional: this folder has none
    assert torch.equal(_latent(pipe).latent, reference.latent)
    with pytest.raises(ValueError, match="trust_remote_code"):  # diffusers runs a folder's file only when asked
        DiffusionPipeline.from_pretrained(folder)
    assert torch.equal(_latent(PyraTokT2VPipeline.from_pretrained(folder)).latent, reference.latent)  # no flag


@pytest.mark.skipif(not (default_model_folder() / "model_index.json").is_file(), reason="no default model")
def test_shipped_model_loads_through_diffusers():
    from pyratok import default_model_path

    pipe = DiffusionPipeline.from_pretrained(default_model_path(), trust_remote_code=True)
    assert type(pipe) is PyraTokT2VPipeline and type(pipe.vae).__name__ == "PyraTokTokenizer"
    assert type(pipe.tokenizer).__name__.startswith("BertTokenizer")  # the default MiniLM's text tokenizer


def test_old_folder_loads_with_a_message(saved, tmp_path):
    folder, reference = saved
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    (old / "pipeline_pyratok.py").unlink()
    index = json.loads((old / "model_index.json").read_text())
    renames = {"vae": "tokenizer", "transformer": "generator", "tokenizer": "text_tokenizer"}
    for new in ("tokenizer", "vae", "transformer"):  # text tokenizer first: its old name is taken by the vae
        (old / new).rename(old / f"_{renames[new]}")
    for new, was in renames.items():
        (old / f"_{was}").rename(old / was)
    index = {renames.get(k, k): v for k, v in index.items()} | {"_class_name": "PyraTokT2VPipeline"}
    (old / "model_index.json").write_text(json.dumps(index))
    with pytest.warns(FutureWarning, match="old component names"):
        pipe = PyraTokT2VPipeline.from_pretrained(old)
    assert torch.equal(_latent(pipe).latent, reference.latent)


def test_non_finite_weights_are_refused_naming_the_tensor(saved, tmp_path):
    folder, _ = saved
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    start = 8 + struct.unpack("<Q", bytes(data[:8]))[0]  # after the header: the tensors' bytes
    data[start + 1000:start + 3000] = b"\xff" * 2000  # 0xFFFFFFFF is a float32 NaN
    weights.write_bytes(bytes(data))
    named = "transformer weight '[a-z_.0-9]+' in .*broken/transformer has [0-9]+ non-finite values"
    with pytest.raises(ValueError, match=named):
        PyraTokT2VPipeline.from_pretrained(broken)


def test_library_code_never_passes_trust_remote_code():
    for package in ("pyratok", "generator", "pipelines"):
        for path in (ROOT / package).rglob("*.py"):
            calls = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]
            assert not any(k.arg == "trust_remote_code" for call in calls for k in call.keywords), path


def test_understanding_reads_both_layouts(saved, tmp_path):
    from pyratok.understanding.loading import load_text_encoder, tokenizer_folder

    folder, _ = saved
    assert tokenizer_folder(folder) == folder / "vae"
    text = load_text_encoder(folder)
    assert text.dim == 16 and text.tokenizer.__class__.__name__.startswith("BertTokenizer")  # the saved tiny BERT
    old = tmp_path / "old"
    (old / "tokenizer").mkdir(parents=True)
    (old / "tokenizer" / "config.json").write_text((folder / "vae" / "config.json").read_text())
    assert tokenizer_folder(old) == old / "tokenizer"
