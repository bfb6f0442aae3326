"""Tests for generator.passes: the finest level drawn in interleaved passes that see each other's draws.

The mechanism tests train tiny generators on clips where half the finest tokens are drawn at random and
the other half take their majority: only a later pass, reading the tokens drawn before it, can know it.
"""
from __future__ import annotations

import pytest
import torch

from generator import PyraTokGenerator, generate
from generator.heads import nats_per_bit
from generator.objective import generator_loss, teacher_forcing_inputs
from generator.passes import merge_passes, pass_masks, step_grids
from pyratok.checkpoints import load_saved_weights
from pyratok.lapq import LaPQ, LaPQConfig

LATENT = (2, 4, 4)  # default strides -> grids (1,1,1) (1,1,1) (1,2,2) (2,4,4)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(passes: int, seed: int = 0, **kwargs) -> PyraTokGenerator:
    torch.manual_seed(seed)
    return PyraTokGenerator(width=32, depth=1, heads=4, finest_passes=passes, **kwargs)


@pytest.fixture(scope="module")
def quantizer() -> LaPQ:
    torch.manual_seed(0)
    lapq = LaPQ(LaPQConfig(use_text=False)).eval()
    with torch.no_grad():
        lapq.level_scale.fill_(2.5)  # residuals as large as the position embedding (a trained LaPQ learns its scales)
    return lapq


def test_passes_split_the_finest_grid_into_interleaved_sets():
    masks = pass_masks((2, 3, 4), 2)
    assert masks.shape == (2, 2, 3, 4) and torch.equal(masks.sum(0), torch.ones(2, 3, 4, dtype=torch.long))
    assert masks[0, 0, 0, 0] and masks[1, 0, 0, 1] and masks[1, 0, 1, 0] and masks[1, 1, 0, 0]  # neighbours differ
    assert torch.equal(pass_masks((2, 3, 4), 1), torch.ones(1, 2, 3, 4, dtype=torch.bool))
    assert step_grids([(1, 1, 1), (2, 4, 4)], 3) == [(1, 1, 1), (2, 4, 4), (2, 4, 4), (2, 4, 4)]
    outputs = [torch.zeros(1, 1, 1, 1, 2), torch.zeros(1, 2, 3, 4, 2), torch.ones(1, 2, 3, 4, 2)]
    merged = merge_passes(outputs, 2)
    assert len(merged) == 2 and torch.equal(merged[1][0, ..., 0], masks[1].float())
    with pytest.raises(ValueError, match="finest_passes must be >= 1, got 0"):
        PyraTokGenerator(finest_passes=0)


def majority_code(batch: int, grids, generator) -> list[torch.Tensor]:
    """Bits (b, t, h, w, 16) per level: coarse levels all-off; each finest token all-on or all-off, at
    random in the first pass's tokens, and in every other token the majority of those (ties: on). Nothing
    coarser tells the second pass's code."""
    out = [-torch.ones(batch, *g, 16) for g in grids[:-1]]
    first = pass_masks(grids[-1], 2)[0]
    sign = (torch.rand(batch, *grids[-1], generator=generator) < 0.5).float() * 2 - 1  # (b, t, h, w)
    majority = torch.where(sign[:, first].sum(1) >= 0, 1.0, -1.0)  # (b,)
    sign = torch.where(first, sign, majority[:, None, None, None])
    return out + [sign[..., None].expand(-1, -1, -1, -1, 16).contiguous()]


def trained(passes: int, quantizer, steps: int = 500) -> PyraTokGenerator:
    """A generator with the sequential code head (a sampled token is whole: all-on or all-off, as in
    training; generator.heads) trained on `majority_code` clips."""
    model = tiny(passes, head="group_codes_sequential", head_hidden=64).train()
    grids = quantizer.grids_for(LATENT)
    rng = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        batch = {"bits": majority_code(16, grids, rng), "text_states": torch.zeros(16, 1, 384),
                 "text_mask": None, "latent_grid": LATENT}
        loss, _ = generator_loss(model, quantizer, batch, rng, cfg_dropout=0.0, passes=passes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def finest_nats(model, quantizer, passes: int, blind: bool = False) -> float:
    """Teacher-forced nats per token of the finest level on fresh clips; `blind` hides the earlier passes'
    tokens from the later ones (the mechanism switched off)."""
    bits = majority_code(64, quantizer.grids_for(LATENT), torch.Generator().manual_seed(9))
    inputs = teacher_forcing_inputs(quantizer, bits, LATENT, passes=passes)
    if blind:
        inputs = inputs[:len(bits)] + [inputs[len(bits) - 1]] * (passes - 1)
    keep = torch.zeros(64, dtype=torch.bool)
    logits = model(inputs, torch.zeros(64, 1, 384), None, drop_text=keep, target_bits=bits)
    return float(nats_per_bit(logits[-1], bits[-1]).sum())  # nats per token


@pytest.fixture(scope="module")
def models(quantizer):
    return {passes: trained(passes, quantizer) for passes in (1, 2)}


def test_a_later_pass_reads_the_tokens_drawn_before_it(models, quantizer):
    """One pass cannot know the second half's code (ln 2 = 0.69 nats per token, a little less for the ties);
    with two, the second pass reads it from the first half's tokens. Hiding those undoes the gain."""
    one, two = finest_nats(models[1], quantizer, 1), finest_nats(models[2], quantizer, 2)
    blind = finest_nats(models[2], quantizer, 2, blind=True)
    assert one > 0.6 and two < 0.5 and blind > 0.6, (one, two, blind)


def test_sampled_tokens_follow_the_tokens_drawn_before_them(models, quantizer):
    """Sampled clips: the second pass's tokens take the first pass's majority; one pass guesses."""
    agreement = {}
    first, second = pass_masks(LATENT, 2)
    for passes, model in models.items():
        bits = generate(model, quantizer, torch.zeros(64, 1, 384), None, LATENT, guidance_scale=1.0,
                        generator=torch.Generator().manual_seed(3)).bits[-1][..., 0]  # (b, t, h, w)
        majority = torch.where(bits[:, first].sum(1) >= 0, 1.0, -1.0)  # (b,)
        agreement[passes] = float((bits[:, second] == majority[:, None]).float().mean())
    assert agreement[1] < 0.7 and agreement[2] > 0.9, agreement


def test_sampling_with_passes_is_seeded_cached_batched_and_prefix_safe(quantizer, tmp_path):
    model = tiny(2, head="group_codes_sequential", head_hidden=32).eval()
    states = torch.randn(3, 5, 384, generator=torch.Generator().manual_seed(1))

    def run(i=slice(None), seeds=(4, 5, 6), **kwargs):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return generate(model, quantizer, states[i], None, LATENT, guidance_scale=3.0, generator=gens, **kwargs)

    full = run()
    assert all(torch.equal(a, b) for a, b in zip(full.bits, run(use_cache=False).bits))
    single = run(slice(1, 2), seeds=(5,))
    assert all(torch.equal(a[1:2], b) for a, b in zip(full.bits, single.bits))
    kept = run(prefix_bits=full.bits)  # every level and pass kept: the same clip
    assert all(torch.equal(a, b) for a, b in zip(full.bits, kept.bits))
    model.save_pretrained(tmp_path / "gen")
    loaded = PyraTokGenerator.from_pretrained(tmp_path / "gen").eval()
    assert loaded.config.finest_passes == 2
    assert torch.equal(run().bits[-1], full.bits[-1])


def test_a_one_pass_generator_grows_into_passes(quantizer, tmp_path):
    """train.init_from + grow_from_init: the new "drawn" input channel starts at zero, so the first pass
    computes what the one-pass generator did."""
    one = tiny(1)
    one.save_pretrained(tmp_path / "one")
    two = tiny(2, seed=1)
    load_saved_weights(two, tmp_path / "one", grow=True)
    bits = majority_code(2, quantizer.grids_for(LATENT), torch.Generator().manual_seed(0))
    text = torch.randn(2, 3, 384)
    first = one(teacher_forcing_inputs(quantizer, bits, LATENT), text)
    steps = two(teacher_forcing_inputs(quantizer, bits, LATENT, passes=2), text, per_level=False)
    for a, b in zip(first, steps):
        torch.testing.assert_close(a, b)


def test_the_memory_and_training_plans_count_the_extra_passes():
    """generator.memory runs `generate` on the meta device and generator.plan the teacher-forced step: both
    take the passes' extra inputs and steps."""
    from generator.config import GeneratorConfig
    from generator.memory import sampling_memory
    from generator.plan import model_cost

    grids = LaPQ(LaPQConfig(use_text=False)).grids_for((2, 8, 8))
    costs, peaks = [], []
    for passes in (1, 2):
        cfg = GeneratorConfig(width=32, depth=1, heads=4, finest_passes=passes)
        costs.append(model_cost(cfg, grids, torch.float32, text_len=4).train_flops)
        peaks.append(sampling_memory(cfg, LaPQConfig(use_text=False), (2, 8, 8), 2, output_type="latent").total)
    assert costs[1] > 1.5 * costs[0] and peaks[1] > peaks[0], (costs, peaks)
