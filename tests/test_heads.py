"""Tests for generator.heads: group codes instead of independent bits, and groups drawn in order.

The mechanism tests train tiny generators on tokens whose bits move together (a group is all-on or
all-off; a token's second group copies its first) and check what each head samples.
"""
from __future__ import annotations

import pytest
import torch

from generator import PyraTokGenerator, generate
from generator.heads import GroupCodeHead, bits_to_codes, codes_to_bits, head_loss, nats_per_bit
from generator.objective import generator_loss
from pyratok.lapq import LaPQ, LaPQConfig

LATENT = (2, 4, 4)  # default strides -> grids (1,1,1) (1,1,1) (1,2,2) (2,4,4): 38 tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(head: str, seed: int = 0, **kwargs) -> PyraTokGenerator:
    torch.manual_seed(seed)
    return PyraTokGenerator(width=32, depth=1, heads=4, head=head, head_hidden=64, **kwargs)


@pytest.fixture(scope="module")
def quantizer() -> LaPQ:
    torch.manual_seed(0)
    return LaPQ(LaPQConfig(use_text=False)).eval()


def test_codes_and_bits_round_trip():
    bits = torch.randint(0, 2, (3, 2, 5, 32), generator=torch.Generator().manual_seed(0)).float() * 2 - 1
    codes = bits_to_codes(bits, 8)
    assert codes.shape == (3, 2, 5, 4) and int(codes.max()) < 256
    assert torch.equal(codes_to_bits(codes, 8), bits)
    assert int(bits_to_codes(torch.tensor([1.0, -1.0, -1.0, 1.0]), 4)) == 0b1001


@pytest.mark.parametrize("sequential", [True, False])
def test_a_group_sees_the_groups_before_it_only_when_sequential(sequential):
    torch.manual_seed(0)
    head = GroupCodeHead(width=16, num_bits=24, group_bits=8, hidden=32, sequential=sequential)
    torch.nn.init.normal_(head.group_embed)
    features = torch.randn(5, 16)
    codes = torch.randint(0, 256, (5, 3))
    base = head(features, codes)  # (5, 3, 256)
    for j in range(3):  # the teacher-forced pass is what sampling computes group by group
        torch.testing.assert_close(base[:, j], head.group_logits(features, codes[:, :j], j))
    changed = codes.clone()
    changed[:, 0] = (codes[:, 0] + 1) % 256
    moved = (head(features, changed) - base).abs().amax(dim=(0, 2))  # per group
    assert moved[0] == 0  # a group never sees its own code
    if sequential:
        assert (moved[1:] > 1e-4).all(), moved
    else:
        assert (moved == 0).all(), moved


def test_loss_matches_a_hand_computed_cross_entropy():
    logits = torch.randn(2, 1, 1, 3, 2, 16)  # (b, t, h, w, g, v): 4-bit groups
    bits = torch.randint(0, 2, (2, 1, 1, 3, 8)).float() * 2 - 1
    loss, stats = head_loss([logits], [bits])
    codes = bits_to_codes(bits, 4)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 16), codes.reshape(-1)) / 4
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nats_per_bit(logits, bits).mean(), expected)
    assert stats["code_acc"] == (logits.argmax(-1) == codes).float().mean()
    with pytest.raises(ValueError, match="do not match"):
        head_loss([logits], [bits[..., :4]])


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="'words'"):
        PyraTokGenerator(head="words")
    with pytest.raises(ValueError, match="head_group_bits=5"):
        PyraTokGenerator(head="group_codes", num_bits=16, head_group_bits=5)


def test_sampling_is_seeded_cached_batched_and_prefix_safe(quantizer, tmp_path):
    model = tiny("group_codes_sequential").eval()
    states = torch.randn(3, 5, 384, generator=torch.Generator().manual_seed(1))

    def run(i=slice(None), seeds=(4, 5, 6), **kwargs):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return generate(model, quantizer, states[i], None, LATENT, guidance_scale=3.0, generator=gens, **kwargs)

    full = run()
    assert all(set(b.unique().tolist()) <= {-1.0, 1.0} for b in full.bits)
    assert all(torch.equal(a, b) for a, b in zip(full.bits, run(use_cache=False).bits))
    single = run(slice(1, 2), seeds=(5,))  # guidance: both texts score the same earlier codes
    assert all(torch.equal(a[1:2], b) for a, b in zip(full.bits, single.bits))
    kept = run(prefix_bits=full.bits[:2])  # a prefix equal to what the seeds sample changes nothing
    assert all(torch.equal(a, b) for a, b in zip(full.bits, kept.bits))
    assert not torch.equal(full.bits[-1], run(seeds=(7, 8, 9)).bits[-1])
    greedy = run(top_k=1)
    assert all(torch.equal(a, b) for a, b in zip(greedy.bits, run(seeds=(1, 2, 3), top_k=1).bits))
    model.save_pretrained(tmp_path / "gen")
    loaded = PyraTokGenerator.from_pretrained(tmp_path / "gen").eval()
    assert loaded.config.head == "group_codes_sequential"
    assert torch.equal(generate(loaded, quantizer, states, None, LATENT, generator=torch.Generator().manual_seed(0))
                       .bits[-1], generate(model, quantizer, states, None, LATENT,
                                           generator=torch.Generator().manual_seed(0)).bits[-1])


def moving_together(batch: int, grids, generator) -> list[torch.Tensor]:
    """Bits (b, t, h, w, 16) per level: group 0 all-on or all-off at random, group 1 a copy of group 0."""
    out = []
    for grid in grids:
        first = (torch.rand(batch, *grid, 1, generator=generator) < 0.5).float() * 2 - 1
        out.append(first.expand(batch, *grid, 16).contiguous())
    return out


@pytest.mark.parametrize("head", ["bits", "group_codes", "group_codes_sequential"])
def test_each_head_samples_what_it_can_represent(head, quantizer):
    """Bitwise heads blend the two codes bit by bit; group codes keep a group whole; only the sequential
    head keeps a token's two groups alike. Without the code softmax or the earlier-group input, it fails."""
    model = tiny(head).train()
    grids = quantizer.grids_for(LATENT)
    rng = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    states = torch.zeros(16, 1, 384)
    for _ in range(150):
        batch = {"bits": moving_together(16, grids, rng), "text_states": states, "text_mask": None,
                 "latent_grid": LATENT}
        loss, _ = generator_loss(model, quantizer, batch, rng, cfg_dropout=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sampled = generate(model.eval(), quantizer, torch.zeros(32, 1, 384), None, LATENT, guidance_scale=1.0,
                       generator=torch.Generator().manual_seed(1))
    bits = torch.cat([b.reshape(-1, 16) for b in sampled.bits])  # (tokens, 16)
    groups = bits.unflatten(-1, (2, 8))
    whole = (groups == groups[..., :1]).all(-1).float().mean()  # a group all-on or all-off
    alike = (groups[:, 0] == groups[:, 1]).all(-1).float().mean()  # a token's two groups equal
    on = (groups[:, 0, 0] > 0).float().mean()
    assert 0.3 < on < 0.7, on  # both codes are drawn, not one
    if head == "bits":
        assert whole < 0.1, whole
    elif head == "group_codes":
        assert whole > 0.95 and alike < 0.7, (whole, alike)
    else:
        assert whole > 0.95 and alike > 0.95, (whole, alike)
