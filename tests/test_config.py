"""Configs: YAML round trip, overrides, and unknown keys named in the error."""
from __future__ import annotations

from pathlib import Path

import pytest

from pyratok.config import ConfigError, cli_overrides, config_to_dict, load_config, save_config
from pyratok.train import TokenizerTrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["tiny", "small", "wan2.1", "on_parent", "decoder_pairs"])
def test_tokenizer_configs_round_trip(name, tmp_path):
    cfg = load_config(TokenizerTrainConfig, CONFIGS / "tokenizer" / f"{name}.yaml")
    for suffix in (".yaml", ".json"):
        again = load_config(TokenizerTrainConfig, save_config(cfg, tmp_path / f"cfg{suffix}"))
        assert again == cfg
        assert config_to_dict(again) == config_to_dict(cfg)


def test_the_decoder_stage_config_trains_the_decoder_of_the_tokenizer_on_parent():
    """configs/tokenizer/decoder_pairs.yaml starts from a tokenizer of configs/tokenizer/on_parent.yaml (the same
    model, so its weights load strictly), trains its decoder alone on both inputs, with two-object clips."""
    stage = load_config(TokenizerTrainConfig, CONFIGS / "tokenizer" / "decoder_pairs.yaml")
    parent = load_config(TokenizerTrainConfig, CONFIGS / "tokenizer" / "on_parent.yaml")
    assert stage.model.alignment.background_text == "background"  # as the alignment stage left it
    stage.model.alignment.background_text = None
    assert stage.model == parent.model
    assert stage.train.decoder_only and 0 < stage.train.decoder_latent_prob < 1 and stage.train.init_from
    assert stage.data.multi_object_prob > 0 and stage.data.real_clips == "train"  # carphone stays held out
    assert stage.loss.ar == stage.loss.align == stage.loss.latent == 0  # terms of frozen parts: nothing to learn


def test_overrides_parse_values():
    cfg = load_config(
        TokenizerTrainConfig,
        CONFIGS / "tokenizer" / "tiny.yaml",
        ["train.max_steps=7", "train.lr=1e-4", "model.quantizer.level_strides=[[2,2,2],[1,1,1]]", "train.pretrained_vae=null"],
    )
    assert cfg.train.max_steps == 7 and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.model.quantizer.level_strides == [(2, 2, 2), (1, 1, 1)]
    assert cfg.train.pretrained_vae is None


@pytest.mark.parametrize(
    "override, key",
    [("train.stepz=3", "train.stepz"), ("model.quantizer.bits=3", "model.quantizer.bits"), ("extra=1", "extra")],
)
def test_unknown_key_is_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(TokenizerTrainConfig, CONFIGS / "tokenizer" / "tiny.yaml", [override])


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_steps: 3\n  speed: fast\n")
    with pytest.raises(ConfigError, match="train.speed"):
        load_config(TokenizerTrainConfig, path)


def test_wrong_type_and_bad_override():
    with pytest.raises(ConfigError, match="train.max_steps"):
        load_config(TokenizerTrainConfig, None, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(TokenizerTrainConfig, None, ["train.max_steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(TokenizerTrainConfig, "no/such/file.yaml")


def test_cli_overrides_appends_given_shortcut_flags_after_set_pairs():
    import argparse

    args = argparse.Namespace(set=["train.max_steps=5"], output_dir="runs/x", pretrained_vae=None)
    flags = {"output_dir": "train.output_dir", "pretrained_vae": "train.pretrained_vae"}
    assert cli_overrides(args, flags) == ["train.max_steps=5", "train.output_dir=runs/x"]
