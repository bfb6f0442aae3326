"""Tests for `GeneratorConfig.finest_conv_passes`: the finest level's bits drawn by the FinestConv in passes,
each seeing the bits drawn before it (generator.finest_conv, generator.sampling.draw_finest_in_passes).
"""
from __future__ import annotations

import math

import pytest
import torch

from generator import GeneratorConfig, PyraTokGenerator, generate
from generator.finest_conv import given_bits, pass_of_bits
from generator.objective import generator_loss, teacher_forcing_inputs
from pyratok.lapq import LaPQ, LaPQConfig

LATENT = (2, 4, 4)  # default strides -> grids (1,1,1) (1,1,1) (1,2,2) (2,4,4)

pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(seed, fn, *args, **kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args, **kwargs)


def conv_model(passes: int, seed: int = 1, **kwargs) -> PyraTokGenerator:
    settings = dict(width=32, depth=2, heads=4, finest_head="conv", finest_conv_width=16, finest_conv_blocks=1)
    return seeded(seed, PyraTokGenerator, **{**settings, **kwargs}, finest_conv_passes=passes).eval()


@pytest.fixture(scope="module")
def quantizer() -> LaPQ:
    return seeded(0, LaPQ, LaPQConfig(use_text=False)).eval()


def text(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 5, 384, generator=g), torch.ones(batch, 5, dtype=torch.bool)


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("bad, match", [
    (dict(finest_conv_passes=0), "finest_conv_passes must be >= 1"),
    (dict(finest_conv_passes=4), "needs finest_head='conv'"),
])
def test_config_errors_name_the_value(bad, match):
    with pytest.raises(ValueError, match=match):
        GeneratorConfig(width=32, heads=4, **bad)


def test_the_pass_schedule_is_cosine_and_each_video_has_its_own_order():
    order = torch.rand(2, 2, 4, 4, 32, generator=torch.Generator().manual_seed(0))
    drawn_in = pass_of_bits(order, 8)
    n = order[0].numel()
    for video in drawn_in:
        counts = torch.bincount(video.flatten(), minlength=8).cumsum(0)
        expected = [round(n * (1 - math.cos(math.pi * (p + 1) / 16))) for p in range(7)] + [n]
        assert counts.tolist() == expected
    assert not torch.equal(drawn_in[0], drawn_in[1])
    assert (pass_of_bits(order, 1) == 0).all()
    given = given_bits(torch.ones(400, 1, 2, 2, 32), torch.Generator().manual_seed(0))  # (b, t, h, w, k)
    share = given.flatten(1).float().mean(1)  # each clip: 1 - cos(pi u / 2), u ~ U(0, 1)
    assert abs(float(share.mean()) - (1 - 2 / math.pi)) < 0.03
    assert float(share.min()) < 0.05 and float(share.max()) > 0.95


def test_a_one_pass_generator_grows_into_one_that_draws_in_passes(quantizer, tmp_path):
    """The given bits enter through a convolution that starts at zero: grown from a saved one-pass conv
    generator, it computes the same logits whatever it is given, until trained; sampling is cached and
    uncached alike, and a video drawn alone is the same video in a batch."""
    from pyratok.checkpoints import load_saved_weights

    one_pass = conv_model(1)
    one_pass.save_pretrained(tmp_path / "gen")
    grown = conv_model(8, seed=2)
    load_saved_weights(grown, tmp_path / "gen", grow=True)
    latents = torch.randn(2, 8, *LATENT, generator=torch.Generator().manual_seed(3))
    bits = quantizer(latents).pyramid.bits
    inputs = teacher_forcing_inputs(quantizer, bits, LATENT)
    states, mask = text(2)
    given = (bits[-1], torch.rand(bits[-1].shape, generator=torch.Generator().manual_seed(4)) < 0.5)
    with torch.no_grad():
        torch.testing.assert_close(grown(inputs, states, mask, finest_given=given)[-1], one_pass(inputs, states, mask)[-1])
        torch.nn.init.normal_(grown.finest_conv.given.conv.weight, generator=torch.Generator().manual_seed(5))
        assert not torch.allclose(grown(inputs, states, mask, finest_given=given)[-1], grown(inputs, states, mask)[-1])
    kwargs = dict(guidance_scale=3.0, negative_prompt_embeds=torch.randn(1, 3, 384))
    one = generate(one_pass, quantizer, *text(), LATENT, generator=gens([4, 5, 6]), **kwargs)
    grown_one = generate(grown, quantizer, *text(), LATENT, generator=gens([4, 5, 6]), finest_conv_passes=1, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(one.bits, grown_one.bits))  # one pass: nothing given
    cached = generate(grown, quantizer, *text(), LATENT, generator=gens([4, 5, 6]), **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(one.bits[:3], cached.bits[:3]))
    assert not torch.equal(one.bits[3], cached.bits[3])  # in 8 passes, through the given bits' weights
    uncached = generate(grown, quantizer, *text(), LATENT, use_cache=False, generator=gens([4, 5, 6]), **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(cached.bits, uncached.bits))
    states, mask = text()
    alone = generate(grown, quantizer, states[1:2], mask[1:2], LATENT, generator=gens([5]), **kwargs)
    assert all(torch.equal(a[1:2], b) for a, b in zip(cached.bits, alone.bits))
    with pytest.raises(ValueError, match="reads no given bits"):
        one_pass(inputs, states[:2], mask[:2], finest_given=given)
    for bad, match in ((2, "finest_conv_passes=2 needs a generator trained"), (0, "got 0")):
        with pytest.raises(ValueError, match=match):
            generate(one_pass, quantizer, states, mask, LATENT, finest_conv_passes=bad)


def agreement(bits: torch.Tensor) -> float:
    """Mean over videos of the share of finest bits equal to the video's majority bit."""
    on = (bits.flatten(1) > 0).float().mean(1)
    return float(torch.maximum(on, 1 - on).mean())


def test_drawing_in_passes_keeps_bits_that_depend_on_each_other_together(quantizer):
    """Every finest bit of a clip is the same coin, which nothing the model reads predicts. Drawn in one
    pass (or by a model trained without given bits) each bit is its own coin: about half agree with the
    majority. Trained with given bits and drawn in 8 passes, the later bits follow the first: nearly all agree."""
    latent = (1, 2, 2)  # grids (1,1,1) (1,1,1) (1,1,1) (1,2,2): 4 finest tokens of 32 bits
    result = {}
    for passes in (1, 8):
        model = conv_model(passes, depth=0).train()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(150):
            coarse = quantizer(torch.randn(16, 8, *latent, generator=g)).pyramid.bits
            coin = torch.where(torch.rand(16, 1, 1, 1, 1, generator=g) < 0.5, 1.0, -1.0)
            bits = coarse[:-1] + [coin.expand_as(coarse[-1])]
            loss, _ = generator_loss(model, quantizer, {"bits": bits, "text_states": None, "text_mask": None,
                                                        "latent_grid": latent}, g, finest_conv_passes=passes)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            drawn = generate(model.eval(), quantizer, None, None, latent, batch_size=64,
                             generator=torch.Generator().manual_seed(1))
        result[passes] = agreement(drawn.bits[-1])
    assert result[1] < 0.65 and result[8] > 0.9, result
