"""The shipped tokenizer (checkpoints/pyratok-tokenizer-tiny): LaPQ on the shipped parent VAE, with its
alignment stage; its fp16 export; and zero-shot understanding using it by default."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors import safe_open

from pyratok.checkpoints import save_half
from pyratok.default_model import default_tokenizer_path
from pyratok.evaluate import build_eval_data, evaluate
from pyratok.export import export, main as export_main
from pyratok.tokenizer import PyraTokTokenizer
from tests.factories import tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def _shipped() -> PyraTokTokenizer:
    return PyraTokTokenizer.from_pretrained(default_tokenizer_path()).eval()


def test_shipped_tokenizer_is_lapq_on_the_shipped_parent():
    tokenizer = _shipped()
    parent_dir = default_tokenizer_path().parent / "pyratok-vae-tiny"
    parent = AutoencoderKLWan.from_pretrained(parent_dir, torch_dtype=torch.float32)
    for name, weight in parent.state_dict().items():  # the parent stayed frozen: its weights, unchanged
        assert torch.equal(tokenizer.backbone.state_dict()[name], weight), name
    assert tokenizer.config["backbone_config"]["latents_mean"] == list(parent.config.latents_mean)
    assert len(tokenizer.quantizer.config.level_strides) >= 3  # a pyramid of levels from several encoder depths
    assert tokenizer.alignment is not None and tokenizer.config["text_dim"] == 384  # aligned to MiniLM


@torch.no_grad()
def test_shipped_tokenizer_beats_the_blur_on_the_held_out_clip():
    # the target: 17x128x128 held-out real clip (carphone) at least 1.5 dB above the blur 4x8x8
    result = evaluate(_shipped(), build_eval_data("heldout-real", 1, 17, 128, seed=0), batch_size=1)
    assert result["psnr"] >= result["blur_psnr"] + 1.5, result


def test_understanding_uses_the_shipped_tokenizer_by_default():
    from pyratok.understanding.loading import load_models

    tokenizer, text_encoder = load_models()
    shipped = _shipped()
    assert tokenizer.state_dict().keys() == shipped.state_dict().keys()
    for (name, mine), theirs in zip(tokenizer.state_dict().items(), shipped.state_dict().values()):
        assert torch.equal(mine, theirs), name
    assert text_encoder(["a red circle"]).hidden_states.shape[-1] == tokenizer.config["text_dim"]


def test_export_halves_the_weights_and_loads_back(tmp_path):
    source = tiny_tokenizer(seed=3)
    source.save_pretrained(tmp_path / "trained")
    out = export(tmp_path / "trained", tmp_path / "shipped")
    with safe_open(str(out / "diffusion_pytorch_model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    assert json.loads((out / "config.json").read_text())["_name_or_path"] == "shipped"  # no training path
    loaded = PyraTokTokenizer.from_pretrained(out)
    for (name, mine), theirs in zip(loaded.state_dict().items(), source.state_dict().values()):
        assert mine.dtype == theirs.dtype and torch.allclose(mine, theirs, rtol=1e-3, atol=1e-4), name
    with pytest.raises(ValueError, match="no config.json"):
        export_main(["--tokenizer", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="must differ"):
        export(out, out)


def test_save_half_adds_config_entries_without_touching_the_model(tmp_path):
    model = AutoencoderKLWan(base_dim=8, z_dim=4, num_res_blocks=1)
    save_half(model, tmp_path / "vae", latents_mean=[0.5] * 4)
    saved = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert saved["latents_mean"] == [0.5] * 4 and model.config.latents_mean != [0.5] * 4
    assert next(model.parameters()).dtype == torch.float32
