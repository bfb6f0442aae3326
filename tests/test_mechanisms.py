"""The paper's three tokenizer mechanisms act: taps at several depths, text guidance, the global AR objective.

Each test fails when its mechanism is switched off or detached (laterals dropped or taps detached;
captions ignored or gates frozen; the AR loss zeroed or its targets detached).
"""
from __future__ import annotations

import pytest
import torch
from factories import tiny_tokenizer

from pyratok.objective import LossWeights, ar_prior_loss, tokenizer_losses

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(batch, 3, 5, 32, 32, generator=g) - 0.5
    video = video + torch.linspace(-0.5, 0.5, batch).view(batch, 1, 1, 1, 1)  # clips differ at every scale
    text = torch.randn(batch, 6, model.cfg.text_dim, generator=g)
    return video, text, torch.ones(batch, 6, dtype=torch.bool)


def _flipped(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[float]:
    return [float((x != y).float().mean()) for x, y in zip(a, b)]


def test_every_tap_reaches_the_bits_of_every_level():
    model = tiny_tokenizer()
    video, text, mask = _inputs(model)
    z, _, taps = model.encode_latent(video)
    assert len(taps) >= 2, "LaPQ must read several encoder depths"
    taps = [t.detach().requires_grad_(True) for t in taps]
    out = model.quantizer(z.detach(), taps, text, mask)
    for level, bits in enumerate(out.bits_st):
        grads = torch.autograd.grad(bits.pow(2).sum() + bits.sum(), taps, retain_graph=True, allow_unused=True)
        for i, g in enumerate(grads):
            assert g is not None and g.abs().sum() > 0, f"tap {i} does not reach level {level}'s bits"
    for i in range(len(taps)):  # one tap taken from the other clip changes the tokens
        swapped = [t.roll(1, dims=0) if j == i else t for j, t in enumerate(taps)]
        with torch.no_grad():
            other = model.quantizer(z, swapped, text, mask).pyramid.bits
        assert _flipped(out.pyramid.bits, other)[-1] > 0, f"tap {i} carries nothing"


def test_the_caption_changes_tokens_and_trains_every_levels_gate():
    model = tiny_tokenizer().train()
    video, text, mask = _inputs(model)
    z, _, taps = model.encode_latent(video)
    with torch.no_grad():
        true = model.quantizer(z, taps, text, mask).pyramid.bits
        wrong = model.quantizer(z, taps, text.roll(1, dims=0), mask).pyramid.bits
        none = model.quantizer(z, taps, *model.text_inputs(2)).pyramid.bits
    assert _flipped(true, wrong)[-1] > 0 and _flipped(true, none)[-1] > 0
    out = model(video, text, mask)
    tokenizer_losses(model, out, video, LossWeights(align=0.0, ar=0.0))["loss"].backward()
    gates = [attn.gate.grad for attn in model.quantizer.text_attn]
    assert all(g is not None and g.abs() > 0 for g in gates), "the reconstruction must train every level's gate"


def _finest_grads(model, video, text, mask, ar: float, to_tokens: bool = True) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    out = model(video, text, mask)
    weights = LossWeights(ssim=0.0, commitment=0.0, latent=0.0, entropy=0.0, align=0.0, ar=ar, ar_to_tokens=to_tokens)
    tokenizer_losses(model, out, video, weights)["loss"].backward()
    grad = model.quantizer.bit_norms[-1].weight.grad
    return torch.zeros(0) if grad is None else grad.clone()


def test_the_ar_objective_reaches_the_finest_levels_bits():
    """The finest level is never context, so only the AR targets' gradient can reach its branch through
    the prior: zeroing the AR weight or detaching the targets removes that part of the gradient."""
    model = tiny_tokenizer().train()
    video, text, mask = _inputs(model)
    with_ar = _finest_grads(model, video, text, mask, ar=1.0)
    without = _finest_grads(model, video, text, mask, ar=0.0)
    assert LossWeights().ar > 0, "the AR objective must be on by default"
    assert (with_ar - without).abs().max() > 1e-6, "the AR loss does not reach the finest level's bits"
    # the ablation (ar_to_tokens=False) trains the prior alone: the quantizer's gradient is as without AR
    ablation = _finest_grads(model, video, text, mask, ar=1.0, to_tokens=False)
    assert torch.allclose(ablation, without, atol=1e-7)
    assert model.prior.head.weight.grad is not None and model.prior.head.weight.grad.abs().sum() > 0


def test_the_ar_loss_trains_the_quantizer_towards_what_the_prior_predicts():
    """d BCE / d target = -logit: a step on the targets alone lowers the prior's loss."""
    model = tiny_tokenizer().train()
    video, text, mask = _inputs(model)
    out = model(video, text, mask)
    loss, _ = ar_prior_loss(model, out)
    params = [model.quantizer.to_bits.weight]
    (g,) = torch.autograd.grad(loss, params)
    assert g.abs().sum() > 0
    with torch.no_grad():
        model.quantizer.to_bits.weight -= 0.5 * g / g.norm()
        after, _ = ar_prior_loss(model, model(video, text, mask))
    assert after < loss
