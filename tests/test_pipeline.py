"""Tests for PyraTokT2VPipeline and export_to_video with tiny random components, on one thread.

Covers output types, num_videos_per_prompt, per-video generators, callbacks, save/load (with and without
the text encoder), tiled decoding and the input checks of pipelines/pipeline_pyratok_t2v.py.
"""
from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
import transformers

from generator import PyraTokGenerator
from pipelines.pipeline_pyratok_t2v import PyraTokT2VPipeline, PyraTokT2VPipelineOutput
from pipelines.video_export import export_to_video
from pyratok.data.video_io import read_video
from pyratok.default_model import default_model_folder
from pyratok.pyramid import TokenPyramid
from pyratok.text_encoder import default_model_path as minilm_path
from pyratok.tokenizer import PyraTokTokenizer

SMALL = dict(num_frames=5, height=16, width=16)  # latent (2, 2, 2) -> levels (1,1,1) (1,1,1) (2,2,2)


pytestmark = pytest.mark.usefixtures("one_thread")


def get_dummy_components(text_dim: int = 16, seed: int = 0, text: bool = True) -> dict:
    """Tiny random tokenizer + generator (3 levels, 16 bits) and a tiny random BERT on MiniLM's vocabulary."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = PyraTokTokenizer(
            backbone_config={"base_dim": 8, "z_dim": 4, "num_res_blocks": 1},
            quantizer_config={"hidden_dim": 32, "num_bits": 16, "bits_per_group": 4,
                              "level_strides": [[4, 4, 4], [2, 2, 2], [1, 1, 1]]},
            alignment_config={"embed_dim": 16, "hidden_dim": 16},
            prior_config={"width": 32, "depth": 1, "heads": 2}, text_dim=text_dim,
        ).eval()
        generator = PyraTokGenerator(latent_channels=4, num_bits=16, num_levels=3, text_dim=text_dim, width=32,
                                     depth=1, heads=2).eval()
        components = {"vae": tokenizer, "transformer": generator, "text_encoder": None, "tokenizer": None}
        if text:
            text_tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
            config = transformers.BertConfig(vocab_size=len(text_tokenizer), hidden_size=text_dim, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
            components.update(text_encoder=transformers.BertModel(config).eval(), tokenizer=text_tokenizer)
    return components


def make_pipe(**kwargs) -> PyraTokT2VPipeline:
    pipe = PyraTokT2VPipeline(**get_dummy_components(**kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def pipe() -> PyraTokT2VPipeline:
    return make_pipe()


def test_output_types_agree(pipe):
    prompts = ["a red circle moving left", "blue square"]
    out = {t: pipe(prompts, generator=gens(1, 2), output_type=t, **SMALL).frames for t in ("pil", "np", "pt")}
    assert out["np"].shape == (2, 5, 16, 16, 3) and out["np"].dtype == np.float32
    assert 0 <= out["np"].min() and out["np"].max() <= 1
    assert out["pt"].shape == (2, 5, 3, 16, 16) and out["pt"].dtype == torch.float32
    np.testing.assert_array_equal(out["pt"].permute(0, 1, 3, 4, 2).numpy(), out["np"])
    assert len(out["pil"]) == 2 and len(out["pil"][0]) == 5 and isinstance(out["pil"][0][0], PIL.Image.Image)
    np.testing.assert_array_equal(np.asarray(out["pil"][1][4]), np.round(out["np"][1, 4] * 255).astype(np.uint8))
    result = pipe(prompts, generator=gens(1, 2), output_type="latent", **SMALL)
    assert isinstance(result, PyraTokT2VPipelineOutput)
    latent = result.frames
    assert isinstance(latent, TokenPyramid) and latent.grids == pipe.vae.token_grids(5, 16, 16)
    assert latent.latent.shape == (2, 4, 2, 2, 2)
    as_tuple = pipe(prompts, generator=gens(1, 2), output_type="np", return_dict=False, **SMALL)
    assert isinstance(as_tuple, tuple) and np.array_equal(as_tuple[0], out["np"])


def test_generator_list_item_alone_equals_batch(pipe):
    prompts = ["a red circle moving left", "green", "a white triangle getting bigger on a black background"]
    batch = pipe(prompts, generator=gens(7, 8, 9), output_type="np", **SMALL).frames
    for k, seed in enumerate((7, 8, 9)):
        alone = pipe(prompts[k], generator=gens(seed), output_type="np", **SMALL).frames
        np.testing.assert_allclose(alone[0], batch[k], atol=1e-5)
    again = pipe(prompts, generator=gens(7, 8, 9), output_type="np", **SMALL).frames
    other = pipe(prompts, generator=gens(1, 8, 9), output_type="np", **SMALL).frames
    assert np.array_equal(again, batch) and not np.allclose(other[0], batch[0]) and np.allclose(other[1], batch[1])


def test_num_videos_per_prompt_and_negative_prompt(pipe):
    prompts, negatives = ["a red circle", "a blue square"], ["green", "purple"]
    out = pipe(prompts, negative_prompt=negatives, num_videos_per_prompt=2, generator=gens(1, 2, 3, 4),
               output_type="np", **SMALL).frames
    assert out.shape == (4, 5, 16, 16, 3)
    # video 3 is prompt 1's second video: the same as prompt 1 alone with generator 4
    alone = pipe(prompts[1], negative_prompt=negatives[1], generator=gens(4), output_type="np", **SMALL).frames
    np.testing.assert_allclose(alone[0], out[3], atol=1e-5)
    plain = pipe(prompts[1], generator=gens(4), output_type="np", **SMALL).frames
    assert not np.allclose(plain[0], out[3])  # the negative prompt replaces the learned null text


def test_progress_and_callback(pipe):
    seen = []

    def callback(p, level, timestep, kwargs):
        seen.append((level, timestep, tuple(kwargs["latents"].shape), tuple(kwargs["bits"].shape)))
        return kwargs

    pipe(["a", "b"], generator=gens(1, 2), output_type="latent", callback_on_step_end=callback,
         callback_on_step_end_tensor_inputs=["latents", "bits"], **SMALL)
    assert seen == [(0, 0, (2, 4, 2, 2, 2), (2, 1, 1, 1, 16)), (1, 1, (2, 4, 2, 2, 2), (2, 1, 1, 1, 16)),
                    (2, 2, (2, 4, 2, 2, 2), (2, 2, 2, 2, 16))]


def test_callback_replaces_tensors_and_interrupts(pipe):
    plain = pipe("a", generator=gens(1), output_type="latent", **SMALL).frames

    def zero_level_0(p, level, timestep, kwargs):  # every bit of level 0 set to -1
        return {"bits": -torch.ones_like(kwargs["bits"])} if level == 0 else kwargs

    changed = pipe("a", generator=gens(1), output_type="latent", callback_on_step_end=zero_level_0,
                   callback_on_step_end_tensor_inputs=["bits"], **SMALL).frames
    assert torch.equal(changed.bits[0], -torch.ones_like(plain.bits[0]))
    assert not torch.equal(plain.bits[0], changed.bits[0])
    assert not torch.equal(plain.latent, changed.latent)  # the replaced bits fed the finer levels and z_hat
    zeroed = pipe("a", generator=gens(1), output_type="latent", **SMALL,
                  callback_on_step_end=lambda p, i, t, kw: {"latents": kw["latents"] * 0} if i == 2 else kw).frames
    assert torch.equal(zeroed.latent, torch.zeros_like(plain.latent)) and torch.equal(zeroed.bits[2], plain.bits[2])

    def stop(p, level, timestep, kwargs):
        p._interrupt = level == 1
        return kwargs

    early = pipe("a", generator=gens(1), output_type="latent", callback_on_step_end=stop, **SMALL).frames
    assert early.num_levels == 2 and torch.equal(early.bits[1], plain.bits[1])
    video = pipe("a", generator=gens(1), output_type="np", callback_on_step_end=stop, **SMALL).frames
    full = pipe("a", generator=gens(1), output_type="np", **SMALL).frames
    assert video.shape == full.shape and not np.allclose(video, full)  # decoded from the two coarse levels


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["vae"] == ["pyratok.tokenizer", "PyraTokTokenizer"]
    assert index["transformer"] == ["generator.model", "PyraTokGenerator"]
    assert index["tokenizer"] == ["transformers", "BertTokenizer"]
    assert index["_class_name"] == ["pipeline_pyratok", "PyraTokT2VPipeline"]
    assert index["text_encoder"] == ["transformers", "BertModel"]
    loaded = PyraTokT2VPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    a = pipe(["a red circle", "b"], generator=gens(3, 4), output_type="pt", **SMALL).frames
    b = loaded(["a red circle", "b"], generator=gens(3, 4), output_type="pt", **SMALL).frames
    assert torch.equal(a, b)


def test_default_text_encoder_is_not_copied(tmp_path):
    pipe = make_pipe(text_dim=384, text=False)  # text components None -> the shipped MiniLM
    assert isinstance(pipe.text_encoder, transformers.BertModel) and pipe.text_encoder.config.hidden_size == 384
    pipe.save_pretrained(tmp_path / "pipe")  # include_text_encoder=None: the default MiniLM is left out
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["text_encoder"] == [None, None] and index["tokenizer"] == [None, None]
    saved = sorted(p.name for p in (tmp_path / "pipe").iterdir())
    assert saved == ["model_index.json", "pipeline_pyratok.py", "transformer", "vae"]
    assert pipe.config.text_encoder == ("transformers", "BertModel")  # restored after saving
    loaded = PyraTokT2VPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    a = pipe("a red circle moving left", generator=gens(5), output_type="np", **SMALL).frames
    b = loaded("a red circle moving left", generator=gens(5), output_type="np", **SMALL).frames
    np.testing.assert_allclose(a, b, atol=1e-6)  # decoder float rounding differs with the memory layout
    pipe.save_pretrained(tmp_path / "full", include_text_encoder=True)
    assert (tmp_path / "full" / "text_encoder" / "config.json").is_file()


def test_tiled_matches_untiled(pipe):
    size = dict(num_frames=5, height=80, width=80)
    full = pipe("a red circle", generator=gens(2), output_type="pt", **size).frames
    pipe.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64, tile_sample_stride_height=32,
                       tile_sample_stride_width=32)
    assert pipe.vae.tiling is not None
    try:
        tiled = pipe("a red circle", generator=gens(2), output_type="pt", **size).frames
    finally:
        pipe.disable_tiling()
    mse = (full - tiled).pow(2).mean()
    assert 0 < mse and 10 * torch.log10(1 / mse) > 25  # tiled for real; random decoder weights: seams stay small


def test_default_size(pipe):
    assert pipe.default_size() == (64, 64)
    small = PyraTokT2VPipeline(**{**pipe.components}, sample_size=[32, 24])
    small.set_progress_bar_config(disable=True)
    assert small.default_size() == (32, 24)
    assert small("a", num_frames=5, generator=gens(0), output_type="latent").frames.latent_grid == (2, 4, 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_frames=6), "num_frames must be 1 \\+ 4k.*got 6"),
    (dict(height=12), "height must be a positive multiple of the spatial factor 8, got 12"),
    (dict(width=20), "width must be .* got 20"),
    (dict(output_type="gif"), "output_type must be one of .* got 'gif'"),
    (dict(negative_prompt=["x", "y"]), "negative_prompt has 2 entries but prompt has 1"),
    (dict(negative_prompt=3), "negative_prompt must be a str or a list of str, got int"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), "\\['noise'\\] are not among"),
    (dict(prompt=[]), "prompt is an empty list"),
    (dict(prompt=["ok", 3]), "prompt\\[1\\] must be a str, got int"),
    (dict(prompt=None), "prompt must be a str or a list of str, got NoneType"),
    (dict(num_videos_per_prompt=0), "num_videos_per_prompt must be a positive int, got 0"),
    (dict(generator=gens(1, 2)), "got 2 generators for a batch of 1"),
])
def test_bad_inputs(pipe, kwargs, message):
    call = {"prompt": "a red circle", **SMALL, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(**call)


def test_mismatched_text_width_is_refused():
    components = get_dummy_components()
    components["transformer"] = PyraTokGenerator(latent_channels=4, num_bits=16, num_levels=3, text_dim=24, width=32,
                                               depth=1, heads=2)
    with pytest.raises(ValueError, match="text widths differ"):
        PyraTokT2VPipeline(**components)


def test_export_to_video_accepts_every_output_type(pipe, tmp_path):
    out = pipe("a", generator=gens(0), output_type="np", **SMALL).frames
    pt = pipe("a", generator=gens(0), output_type="pt", **SMALL).frames
    pil = pipe("a", generator=gens(0), output_type="pil", **SMALL).frames
    as_uint8 = np.round(out[0] * 255).astype(np.uint8)
    decoded = {}
    for name, frames in {"u8": as_uint8, "np": out[0], "pt": pt[0], "pil": pil[0]}.items():
        decoded[name], meta = read_video(export_to_video(frames, tmp_path / f"{name}.mp4", fps=8))
        assert decoded[name].shape == (5, 16, 16, 3) and meta.fps == 8
        assert np.array_equal(decoded[name], decoded["u8"]), name  # every input gives the same uint8 frames
    assert np.abs(decoded["u8"].astype(float) - as_uint8).mean() < 20  # lossy yuv420 h264 of a 16x16 noise clip
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        export_to_video(out[0] * 2 - 1, tmp_path / "bad.mp4")
    with pytest.raises(ValueError, match="pass frames\\[k\\]"):
        export_to_video(out, tmp_path / "batch.mp4")


@pytest.mark.skipif(not (default_model_folder() / "model_index.json").is_file(), reason="default model not trained yet")
def test_default_model_loads_and_generates():
    from pipelines.pipeline_pyratok_t2v import load_pipeline
    from pyratok import default_model_path

    shipped = load_pipeline(default_model_path())
    assert shipped.config.text_encoder == ("transformers", "BertModel")
    frames = shipped("a red circle moving left", generator=gens(0), output_type="np").frames
    assert frames.shape[0] == 1 and frames.shape[1] == 17
