"""Tests for the diffusers-style arguments of PyraTokT2VPipeline.__call__ and its refusals of bad values.

Prompt embeddings vs prompts, a token-pyramid prefix as `latents`, max_sequence_length, top_k / top_p,
attention_kwargs; every bad value a ValueError naming it, raised before any model runs.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_pipeline import SMALL, gens, make_pipe

from pyratok.pyramid import TokenPyramid

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


def test_prompt_embeds_give_the_same_video_as_the_prompt(pipe):
    prompts, negatives = ["a red circle moving left", "blue"], ["green", "a white square"]
    embeds, mask, neg, neg_mask = pipe.encode_prompt(prompts, negatives)
    assert embeds.shape[:2] == mask.shape and neg.shape[:2] == neg_mask.shape and mask.dtype == torch.bool
    assert pipe.encode_prompt(prompts)[2:] == (None, None)  # no negative: the learned null text
    by_text = pipe(prompts, negative_prompt=negatives, generator=gens(3, 4), output_type="np", **SMALL).frames
    by_embeds = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=neg,
                     negative_prompt_attention_mask=neg_mask, generator=gens(3, 4), output_type="np", **SMALL).frames
    np.testing.assert_array_equal(by_text, by_embeds)
    two = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, num_videos_per_prompt=2, generator=gens(3, 5, 4, 6),
               output_type="np", **SMALL).frames
    alone = pipe(prompts[1], generator=gens(6), output_type="np", **SMALL).frames
    np.testing.assert_allclose(two[3], alone[0], atol=1e-6)  # row 1's second video


def test_max_sequence_length_cuts_the_prompt(pipe):
    long = "a red circle moving left on a black background while a blue square grows"
    embeds, mask, _, _ = pipe.encode_prompt(long, max_sequence_length=4)
    assert embeds.shape[1] == 4 and mask.all()
    cut = pipe(long, max_sequence_length=4, generator=gens(2), output_type="latent", **SMALL).frames
    same = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, generator=gens(2), output_type="latent",
                **SMALL).frames
    full = pipe(long, generator=gens(2), output_type="latent", **SMALL).frames
    assert torch.equal(cut.latent, same.latent) and not torch.equal(cut.latent, full.latent)


def test_latents_prefix_is_kept_and_the_rest_sampled(pipe):
    full = pipe(["a", "b"], generator=gens(1, 2), output_type="latent", **SMALL).frames
    prefix = TokenPyramid(full.bits[:2], full.latent_grid)
    again = pipe(["a", "b"], latents=prefix, generator=gens(1, 2), output_type="latent", **SMALL).frames
    assert all(torch.equal(x, y) for x, y in zip(again.bits, full.bits))  # the seed's own prefix changes nothing
    flipped = TokenPyramid([-b for b in full.bits[:2]], full.latent_grid)
    other = pipe(["a", "b"], latents=flipped, generator=gens(1, 2), output_type="latent", **SMALL).frames
    assert torch.equal(other.bits[0], flipped.bits[0]) and torch.equal(other.bits[1], flipped.bits[1])
    assert not torch.equal(other.bits[2], full.bits[2])  # the finest level follows the given coarse levels
    video = pipe(["a", "b"], latents=flipped, generator=gens(1, 2), output_type="np", **SMALL).frames
    assert video.shape == (2, 5, 16, 16, 3)


def test_top_k_and_top_p_reach_sampling(pipe):
    greedy = [pipe("a", top_k=1, generator=gens(s), output_type="latent", **SMALL).frames for s in (1, 2)]
    assert all(torch.equal(x, y) for x, y in zip(greedy[0].bits, greedy[1].bits))  # no randomness left
    sampled = [pipe("a", generator=gens(s), output_type="latent", **SMALL).frames for s in (1, 2)]
    assert not all(torch.equal(x, y) for x, y in zip(sampled[0].bits, sampled[1].bits))
    near_greedy = pipe("a", top_p=0.5, generator=gens(1), output_type="latent", **SMALL).frames
    assert all(torch.equal(x, y) for x, y in zip(near_greedy.bits, greedy[0].bits))  # top_p 0.5 keeps the likelier bit


def test_finest_decode_reaches_sampling(pipe):
    drawn = pipe(["a", "b"], generator=gens(1, 2), output_type="latent", **SMALL).frames
    mean = pipe(["a", "b"], finest_decode="expected", generator=gens(1, 2), output_type="latent", **SMALL).frames
    assert all(torch.equal(x, y) for x, y in zip(mean.bits, drawn.bits))  # the same tokens are drawn
    assert not torch.allclose(mean.latent, drawn.latent)  # but the finest level decodes from their means


def test_attention_kwargs_scale_one_changes_nothing(pipe):
    plain = pipe("a", generator=gens(1), output_type="latent", **SMALL).frames
    scaled = pipe("a", attention_kwargs={"scale": 1.0}, generator=gens(1), output_type="latent", **SMALL).frames
    assert torch.equal(plain.latent, scaled.latent)


@pytest.mark.parametrize("kwargs, message", [
    (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number >= 0, got nan"),
    (dict(guidance_scale=-1.0), "guidance_scale must be a finite number >= 0, got -1.0"),
    (dict(guidance_schedule=[1.0, float("inf"), 2.0]), "guidance_schedule must be a finite number >= 0, got inf"),
    (dict(temperature=float("nan")), "temperature must be a finite number > 0, got nan"),
    (dict(temperature=-0.5), "temperature must be a finite number > 0, got -0.5"),
    (dict(temperature=[1.0, 0.0, 1.0]), "temperature must be a finite number > 0, got 0.0"),
    (dict(top_k=0), "top_k must be an int >= 1 or None, got 0"),
    (dict(top_p=1.5), "top_p must be in \\(0, 1\\] or None, got 1.5"),
    (dict(finest_decode="mean"), "finest_decode must be one of \\('sample', 'expected'\\), got 'mean'"),
    (dict(finest_conv_passes=8), "finest_conv_passes=8 needs a generator trained to draw its finest level in passes"),
    (dict(finest_conv_passes=0), "finest_conv_passes must be an int >= 1, got 0"),
    (dict(height=0), "height must be a positive multiple of the spatial factor 8, got 0"),
    (dict(width=-8), "width must be a positive multiple .* got -8"),
    (dict(num_frames=0), "num_frames must be 1 \\+ 4k .* got 0"),
    (dict(num_frames=4 * 10**8 + 1), "need about [0-9.]+ GB beyond the loaded weights .* but [0-9.]+ GB are available"),
    (dict(height=2**20, width=2**20), "need about [0-9.]+ GB"),
    (dict(generator="foo"), "generator must be a torch.Generator or a list of them, got str: 'foo'"),
    (dict(generator=[torch.Generator(), 3]), "generator\\[1\\] must be a torch.Generator, got int"),
    (dict(max_sequence_length=0), "max_sequence_length must be a positive int, got 0"),
    (dict(attention_kwargs={"heads": 2}), "attention_kwargs takes only 'scale'"),
    (dict(latents=torch.zeros(1)), "latents must be a TokenPyramid"),
    (dict(prompt_embeds=torch.zeros(1, 3, 16)), "pass prompt or prompt_embeds, not both"),
])
def test_bad_values_are_refused_before_any_model_runs(pipe, kwargs, message, monkeypatch):
    def no_model(*args, **kw):
        raise AssertionError("a model ran before the check")

    monkeypatch.setattr(pipe, "encode_prompt", no_model)
    with pytest.raises(ValueError, match=message):
        pipe(**{"prompt": "a red circle", **SMALL, **kwargs})


def test_prefix_of_the_wrong_grid_is_refused(pipe):
    full = pipe("a", generator=gens(1), output_type="latent", **SMALL).frames
    with pytest.raises(ValueError, match="latents level 0 has bits .* but this call samples 2 videos"):
        pipe(["a", "b"], latents=TokenPyramid(full.bits[:1], full.latent_grid), generator=gens(1, 2), **SMALL)
