"""Tests for generator.contrast: swapped captions in the token cache and the caption-contrastive term.

The mechanism test trains tiny generators on clips whose coarse levels show a "colour" word and whose first
finest token shows a "shape" word in two of its sixteen bits (every other finest bit is noise): with the same
steps, only the contrastive term makes the likelihood tell the true shape word from a swapped one.
"""
from __future__ import annotations

import pytest
import torch

from factories import FakeTextEncoder
from generator import PyraTokGenerator
from generator.contrast import SwappedCaptions, contrast_loss, parse_word_groups, swap_word
from generator.heads import clip_nats
from generator.objective import generator_loss, teacher_forcing_inputs
from generator.token_cache import QuantizerEncoder, TokenCacheDataset, build_token_cache, random_latents
from pyratok.lapq import LaPQ, LaPQConfig

LATENT = (2, 4, 4)  # default strides -> grids (1,1,1) (1,1,1) (1,2,2) (2,4,4)
SHAPES = ("circle", "square", "triangle")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_swap_word_replaces_one_whole_word_of_a_group():
    groups = parse_word_groups(["circle,square,triangle", "red, blue"])
    rng = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(40):
        out = swap_word("A red Circle and a blue squares", groups, rng)
        before, after = "A red Circle and a blue squares".split(), out.split()
        changed = [(a, b) for a, b in zip(before, after) if a != b]
        assert len(after) == len(before) and len(changed) == 1, out  # "squares" is not the word "square"
        seen.add(changed[0])
    assert seen == {("red", "blue"), ("blue", "red"), ("Circle", "square"), ("Circle", "triangle")}
    again = [swap_word("a red circle", groups, torch.Generator().manual_seed(s)) for s in range(5)]
    assert again == [swap_word("a red circle", groups, torch.Generator().manual_seed(s)) for s in range(5)]
    with pytest.raises(ValueError, match="no word of the contrast groups"):
        swap_word("a green ball", groups, rng)
    with pytest.raises(ValueError, match="at least two distinct words, got 'circle,circle'"):
        parse_word_groups(["circle,circle"])
    with pytest.raises(ValueError, match="word 'red' is in two groups"):
        parse_word_groups(["red,blue", "red,green"])


def test_allowed_rules_swaps_out_and_the_draw_keeps_to_the_rest():
    """A swap `allowed` rejects is never drawn (e.g. a held-out colour x shape pair); none left: ValueError."""
    not_yellow_triangle = lambda caption: "yellow triangle" not in caption  # noqa: E731
    outs = {swap_word("a yellow circle", [SHAPES], torch.Generator().manual_seed(s), not_yellow_triangle)
            for s in range(30)}
    assert outs == {"a yellow square"}
    assert {swap_word("a yellow circle", [SHAPES], torch.Generator().manual_seed(s)) for s in range(30)} == {
        "a yellow square", "a yellow triangle"}
    assert swap_word("a yellow square", [SHAPES], None, not_yellow_triangle) == "a yellow circle"  # next allowed
    with pytest.raises(ValueError, match="no word of the contrast groups .* to a caption `allowed` accepts"):
        swap_word("a yellow circle", [["circle", "triangle"]], None, not_yellow_triangle)


def test_swapped_captions_are_fixed_by_seed_and_index():
    data = [{"caption": f"a {s} moving left", "video": torch.zeros(1)} for s in SHAPES * 3]
    first = [x["negative_prompt"] for x in SwappedCaptions(data, [SHAPES], seed=1)]
    assert first == [SwappedCaptions(data, [SHAPES], seed=1)[i]["negative_prompt"] for i in range(len(data))]
    assert all(n != x["caption"] and n.endswith("moving left") for n, x in zip(first, data))
    with pytest.raises(ValueError, match="sample 0 has no caption"):
        SwappedCaptions([{"video": torch.zeros(1)}], [SHAPES])[0]


def test_the_token_cache_keeps_the_swapped_captions(tmp_path):
    torch.manual_seed(0)
    quantizer = LaPQ(LaPQConfig(use_text=True)).eval()
    samples = random_latents(6, 8, LATENT, torch.Generator().manual_seed(0), prompts=["a circle", "one square"])
    samples = [{**s, "negative_prompt": f"swapped {i}"} for i, s in enumerate(samples)]
    cache = TokenCacheDataset(build_token_cache(QuantizerEncoder(quantizer), FakeTextEncoder(), samples,
                                                tmp_path / "cache", batch_size=4, shard_size=4, progress=False))
    assert cache.has_negatives
    batch = cache.collate([cache[i] for i in range(6)])
    expected = FakeTextEncoder()([f"swapped {i}" for i in range(6)])
    n = expected.hidden_states.shape[1]
    torch.testing.assert_close(batch["negative_text_states"][:, :n], expected.hidden_states.half().float())
    assert torch.equal(batch["negative_text_mask"][:, :n], expected.attention_mask)
    samples[3].pop("negative_prompt")
    with pytest.raises(ValueError, match="some samples have a negative_prompt and some do not"):
        build_token_cache(QuantizerEncoder(quantizer), FakeTextEncoder(), samples, tmp_path / "mixed", progress=False)
    plain = TokenCacheDataset(build_token_cache(QuantizerEncoder(quantizer), FakeTextEncoder(), random_latents(
        2, 8, LATENT, torch.Generator()), tmp_path / "plain", progress=False))
    assert not plain.has_negatives and "negative_text_states" not in plain.collate([plain[0], plain[1]])


def test_contrast_loss_counts_only_clips_trained_on_their_caption():
    true, swapped = torch.tensor([0.30, 0.30, 0.30]), torch.tensor([0.31, 0.30, 0.50])
    loss, stats = contrast_loss(true, swapped, torch.tensor([True, True, False]), tau=0.01)
    expected = (torch.nn.functional.softplus(torch.tensor(-1.0)) + torch.log(torch.tensor(2.0))) / 2
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(stats["contrast_gap"], torch.tensor(0.005))
    with pytest.raises(ValueError, match="must all be"):
        contrast_loss(true, swapped[:2], torch.ones(3, dtype=torch.bool), 0.01)


# --- the mechanism ---------------------------------------------------------------------------------------
WORDS = torch.randn(7, 384, generator=torch.Generator().manual_seed(5))  # 3 shape words, then 4 colour words


@pytest.fixture(scope="module")
def quantizer() -> LaPQ:
    torch.manual_seed(0)
    lapq = LaPQ(LaPQConfig(use_text=False)).eval()
    with torch.no_grad():
        lapq.level_scale.fill_(2.5)
    return lapq


def word_clips(batch: int, grids, generator):
    """(bits per level, text (b, 2, 384), swapped text): every coarse bit shows the colour (4 values, 2
    bits repeated); the first finest token shows the shape in its first two bits, every other finest bit is noise."""
    shape = torch.randint(3, (batch,), generator=generator)
    other = (shape + torch.randint(1, 3, (batch,), generator=generator)) % 3
    colour = torch.randint(4, (batch,), generator=generator)
    colour_bits = torch.stack([colour % 2, colour // 2], -1).float() * 2 - 1  # (b, 2)
    bits = [colour_bits[:, None, None, None].repeat(1, *g, 8) for g in grids[:-1]]
    noise = (torch.rand(batch, *grids[-1], 16, generator=generator) < 0.5).float() * 2 - 1
    noise[:, 0, 0, 0, :2] = torch.stack([shape % 2, shape // 2], -1).float() * 2 - 1  # (b, 2)
    text = torch.stack([WORDS[shape], WORDS[3 + colour]], 1)
    return bits + [noise], text, torch.stack([WORDS[other], WORDS[3 + colour]], 1)


def trained(quantizer, contrast_weight: float, steps: int = 300) -> PyraTokGenerator:
    torch.manual_seed(0)
    model = PyraTokGenerator(width=32, depth=1, heads=4, num_bits=16).train()
    rng = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(steps):
        bits, text, swapped = word_clips(16, quantizer.grids_for(LATENT), rng)
        batch = {"bits": bits, "text_states": text, "text_mask": None, "negative_text_states": swapped,
                 "negative_text_mask": None, "latent_grid": LATENT}
        loss, _ = generator_loss(model, quantizer, batch, rng, cfg_dropout=0.1, contrast_weight=contrast_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def swap_gap(model, quantizer) -> float:
    """Mean rise of a fresh clip's nats per bit when its shape word is swapped (held-out clips)."""
    bits, text, swapped = word_clips(128, quantizer.grids_for(LATENT), torch.Generator().manual_seed(9))
    inputs = teacher_forcing_inputs(quantizer, bits, LATENT)
    nats = [clip_nats(model(inputs, t, None, target_bits=bits), bits) for t in (text, swapped)]
    return float((nats[1] - nats[0]).mean())


def test_the_contrastive_term_ties_the_likelihood_to_the_swapped_word(quantizer):
    """Same data, steps and seed. Likelihood alone has not found the word's two bits under the noise after 300
    steps (the swap moves a clip by 0.00003 nats per bit); with the term, whose noise cancels between the two
    captions, the swap costs 0.024 (two bits known of 608: at most ~0.02-0.03)."""
    plain, contrast = swap_gap(trained(quantizer, 0.0), quantizer), swap_gap(trained(quantizer, 1.0), quantizer)
    assert plain < 0.003 and contrast > 0.01, (plain, contrast)


def test_the_contrastive_term_needs_swapped_captions(quantizer):
    model = PyraTokGenerator(width=32, depth=1, heads=4, num_bits=16)
    bits, text, _ = word_clips(2, quantizer.grids_for(LATENT), torch.Generator().manual_seed(0))
    batch = {"bits": bits, "text_states": text, "text_mask": None, "latent_grid": LATENT}
    with pytest.raises(ValueError, match="build the token cache with --contrast-words"):
        generator_loss(model, quantizer, batch, torch.Generator(), contrast_weight=1.0)
