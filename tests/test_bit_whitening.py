"""Running bit whitening: balanced, decorrelated bits; statistics frozen in eval; loadable into old models."""
from __future__ import annotations

import pytest
import torch

from factories import tiny_tokenizer

from pyratok.bit_whitening import BitWhitening
from pyratok.checkpoints import load_saved_weights
from pyratok.quant_losses import usage_stats


def skewed_logits(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 8) logits whose bits are mostly on and correlated: a few codes of each 4-bit group dominate."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 1, generator=g)
    return 1.5 + shared + 0.5 * torch.randn(n, 8, generator=g)


def test_whitened_bits_are_balanced_and_use_every_code():
    layer = BitWhitening(num_levels=2, num_bits=8, bits_per_group=4, momentum=0.1).train()
    for seed in range(30):
        layer(skewed_logits(512, seed), level=1)
    layer.eval()
    x = skewed_logits(4096, seed=99)
    white = layer(x, level=1)
    assert white.mean(0).abs().max() < 0.1
    for group in white.split(4, dim=-1):
        assert torch.allclose(torch.cov(group.T), torch.eye(4), atol=0.15)
    before, after = (usage_stats(torch.sign(v), 4) for v in (x, white))
    assert before["perplexity"] < 0.5 and after["perplexity"] > 0.9 and after["utilization"] == 1.0
    assert layer.num_updates.tolist() == [0, 30]  # level 0 untouched


def test_statistics_update_only_in_training_and_when_asked():
    layer = BitWhitening(num_levels=1, num_bits=8, bits_per_group=4)
    x = skewed_logits(64)
    layer.eval()(x, level=0)
    layer.train()(x, level=0, update=False)
    assert layer.num_updates.item() == 0 and torch.equal(layer.running_mean, torch.zeros_like(layer.running_mean))
    layer(x, level=0)
    assert layer.num_updates.item() == 1  # the first batch sets the statistics outright
    assert torch.allclose(layer.running_mean.flatten(), x.mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="momentum"):
        BitWhitening(1, 8, 4, momentum=0.0)


def test_whitening_switches_on_over_a_saved_model_and_round_trips(tmp_path):
    plain = tiny_tokenizer()
    plain.save_pretrained(tmp_path / "plain")
    white = tiny_tokenizer(seed=1, quantizer_config={"whiten_bits": True})
    load_saved_weights(white, tmp_path / "plain")  # parameters from disk, whitening statistics fresh
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), white.parameters()))
    video = torch.rand(2, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        white.train().encode(video)
    assert white.quantizer.whitening.num_updates.min() == 1
    white.eval().save_pretrained(tmp_path / "white")
    again = type(white).from_pretrained(tmp_path / "white").eval()
    assert again.quantizer.config.whiten_bits
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(white.encode(video).bits, again.encode(video).bits))
    tiny_tokenizer(quantizer_config={"use_text": False}).save_pretrained(tmp_path / "no_text")
    with pytest.raises(ValueError, match="missing"):  # missing parameters still fail: only buffers start fresh
        load_saved_weights(tiny_tokenizer(), tmp_path / "no_text")


@pytest.mark.parametrize("refine", [False, True])
def test_training_step_with_whitening_updates_statistics_from_both_passes(refine):
    """Also with refine_groups, where each group is whitened in its own call: one update a pass."""
    from pyratok.objective import LossWeights, TokenizerObjective

    model = tiny_tokenizer(quantizer_config={"whiten_bits": True, "refine_groups": refine}).train()
    objective = TokenizerObjective(model, LossWeights())
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 5, 32, 32, generator=g) * 2 - 1
    states, mask = torch.randn(2, 6, 24, generator=g), torch.ones(2, 6, dtype=torch.bool)
    terms, _ = objective(video, states, mask, states.mean(1), drop_text=torch.tensor([True, False]))
    assert "align" in terms and all(torch.isfinite(v) for v in terms.values() if torch.is_tensor(v))
    terms["loss"].backward()
    assert model.quantizer.to_bits.weight.grad.abs().sum() > 0  # gradients pass through the whitening
    # the captioned pass and the alignment loss's uncaptioned pass both update the statistics
    assert model.quantizer.whitening.num_updates.tolist() == [2, 2, 2]
