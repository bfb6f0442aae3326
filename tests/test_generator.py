"""Tests for generator.model / generator.sampling: level-by-level sampling, per-sample generators,
classifier-free guidance, KV-cache sampling, save/load, and a 50-step overfit (tiny, one thread).
"""
from __future__ import annotations

import pytest
import torch

from generator import GeneratorConfig, PyraTokGenerator, generate
from generator.memory import sampling_memory
from generator.objective import flip_bits, generator_loss, teacher_forcing_inputs
from generator.sampling import guidance_per_level, guided_logits, parse_guidance_schedule, sample_bits
from pyratok.lapq import LaPQ, LaPQConfig
from pyratok.nextscale import bitwise_loss
from pyratok.null_text import drop_text
from pyratok.pyramid import resample

LATENT = (2, 4, 4)  # default strides -> grids (1,1,1) (1,1,1) (1,2,2) (2,4,4): 38 tokens


pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(seed, fn, *args, **kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def quantizer() -> LaPQ:
    return seeded(0, LaPQ, LaPQConfig(use_text=False)).eval()


@pytest.fixture(scope="module")
def model() -> PyraTokGenerator:
    return seeded(1, PyraTokGenerator, width=32, depth=2, heads=4).eval()


@pytest.fixture(scope="module")
def conv_model() -> PyraTokGenerator:
    """The finest level drawn by a 3D CNN (generator.finest_conv), the coarse ones by the transformer."""
    return seeded(1, PyraTokGenerator, width=32, depth=2, heads=4, finest_head="conv", finest_conv_width=16,
                  finest_conv_blocks=1).eval()


def text(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, 5, 384, generator=g)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[0, 2:] = False
    return states, mask


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_generate_shapes_and_callback(model, quantizer):
    states, mask = text()
    seen = []
    pyramid = model.generate(quantizer, states, mask, LATENT, generator=gens([0, 1, 2]),
                             callback=lambda level, p: seen.append((level, p.num_levels)))
    assert pyramid.grids == quantizer.grids_for(LATENT)
    assert pyramid.num_tokens == 38 and pyramid.batch_size == 3
    assert all(set(b.unique().tolist()) <= {-1.0, 1.0} for b in pyramid.bits)
    assert seen == [(0, 1), (1, 2), (2, 3), (3, 4)]
    torch.testing.assert_close(pyramid.latent, quantizer.reconstruct(pyramid.bits, LATENT))


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_batch_equals_one_by_one(model, quantizer, scale):
    states, mask = text()
    batch = generate(model, quantizer, states, mask, LATENT, guidance_scale=scale, generator=gens([7, 8, 9]))
    for i, seed in enumerate([7, 8, 9]):
        single = generate(model, quantizer, states[i:i + 1], mask[i:i + 1], LATENT, guidance_scale=scale,
                          generator=gens([seed]))
        for level, (b, s) in enumerate(zip(batch.bits, single.bits)):
            assert torch.equal(b[i:i + 1], s), f"sample {i} level {level} differs"


def test_same_seed_same_tokens_and_seeds_matter(model, quantizer):
    states, mask = text()
    a = generate(model, quantizer, states, mask, LATENT, generator=torch.Generator().manual_seed(3))
    b = generate(model, quantizer, states, mask, LATENT, generator=torch.Generator().manual_seed(3))
    c = generate(model, quantizer, states, mask, LATENT, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a.bits, b.bits))
    assert not all(torch.equal(x, y) for x, y in zip(a.bits, c.bits))


def test_guidance_one_equals_the_conditional_branch(model, quantizer):
    cond, uncond = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    assert guided_logits(cond, uncond, 1.0) is cond
    states, mask = text()
    plain = generate(model, quantizer, states, mask, LATENT, guidance_scale=1.0, generator=gens([1, 2, 3]))
    # scale 1 on levels 0-2 inside a doubled (cond + uncond) batch: identical tokens there
    mixed = generate(model, quantizer, states, mask, LATENT, guidance_schedule=[1.0, 1.0, 1.0, 5.0],
                     generator=gens([1, 2, 3]))
    for level in range(3):
        assert torch.equal(plain.bits[level], mixed.bits[level])
    assert not torch.equal(plain.bits[3], mixed.bits[3])


def test_cached_and_uncached_sampling_agree(model, quantizer):
    states, mask = text()
    negative = torch.randn(1, 3, 384, generator=torch.Generator().manual_seed(5))
    kwargs = dict(guidance_scale=3.0, guidance_schedule="linear", negative_prompt_embeds=negative, temperature=[1, 1, .8, .9])
    a = generate(model, quantizer, states, mask, LATENT, use_cache=True, generator=gens([4, 5, 6]), **kwargs)
    b = generate(model, quantizer, states, mask, LATENT, use_cache=False, generator=gens([4, 5, 6]), **kwargs)
    assert all(torch.equal(x, y) for x, y in zip(a.bits, b.bits))


def test_schedules_and_argument_errors(model, quantizer):
    assert guidance_per_level(4.0, "linear", 4) == [1.0, 2.0, 3.0, 4.0]
    assert guidance_per_level(2.0, None, 3) == [2.0] * 3
    assert guidance_per_level(9.0, [1, 2, 3], 3) == [1.0, 2.0, 3.0]
    assert [parse_guidance_schedule(t) for t in (None, "constant", "linear", "3,3,3,1")] == \
        [None, "constant", "linear", [3.0, 3.0, 3.0, 1.0]]
    with pytest.raises(ValueError, match="comma-separated scales, got '3;1'"):
        parse_guidance_schedule("3;1")
    with pytest.raises(ValueError, match="'cosine'"):
        guidance_per_level(2.0, "cosine", 4)
    states, mask = text()
    with pytest.raises(ValueError, match="guidance_schedule has 2 values"):
        generate(model, quantizer, states, mask, LATENT, guidance_schedule=[1.0, 2.0])
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        generate(model, quantizer, states, mask, LATENT, generator=gens([0, 1]))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        generate(model, quantizer, states, mask, LATENT, temperature=0.0)
    with pytest.raises(ValueError, match="5 levels"):
        bigger = LaPQ(LaPQConfig(use_text=False, level_strides=[(16,) * 3, (8,) * 3, (4,) * 3, (2,) * 3, (1,) * 3]))
        generate(model, bigger, states, mask, LATENT)


def test_expected_finest_decode_draws_the_same_tokens_and_decodes_their_means(model, quantizer):
    states, mask = text()
    kwargs = dict(guidance_scale=3.0, temperature=0.7)
    drawn = generate(model, quantizer, states, mask, LATENT, generator=gens([1, 2, 3]), **kwargs)
    mean = generate(model, quantizer, states, mask, LATENT, generator=gens([1, 2, 3]), finest_decode="expected", **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(drawn.bits, mean.bits))  # the pyramid keeps the drawn tokens
    with torch.no_grad():  # the finest level's guided logits, teacher-forced on the drawn coarse levels
        inputs = teacher_forcing_inputs(quantizer, drawn.bits, LATENT)
        guided = guided_logits(model(inputs, states, mask)[-1], model(inputs)[-1], 3.0)
    finest = quantizer.dequantize_level(torch.tanh(guided / (2 * 0.7)), 3)  # E[bit] = 2 sigmoid(logit / T) - 1
    want = quantizer.reconstruct(drawn.bits[:3], LATENT) + resample(finest, LATENT)
    torch.testing.assert_close(mean.latent, want, atol=1e-5, rtol=1e-4)
    assert (mean.latent - drawn.latent).abs().max() > 0.01
    greedy = [generate(model, quantizer, states, mask, LATENT, top_k=1, finest_decode=d, generator=gens([1, 2, 3]))
              for d in ("sample", "expected")]
    torch.testing.assert_close(greedy[0].latent, greedy[1].latent)  # greedy bits are their own mean


def test_finest_decode_is_checked_before_sampling(model, quantizer):
    states, mask = text()
    with pytest.raises(ValueError, match="finest_decode must be one of \\('sample', 'expected'\\), got 'mean'"):
        generate(model, quantizer, states, mask, LATENT, finest_decode="mean")
    codes = PyraTokGenerator(width=32, depth=1, heads=4, head="group_codes", head_group_bits=4, head_hidden=16).eval()
    with pytest.raises(ValueError, match="needs the bitwise head .* head is 'group_codes'"):
        generate(codes, quantizer, states, mask, LATENT, finest_decode="expected")


def test_greedy_and_top_p():
    logits = torch.tensor([[3.0, -2.0, 0.1, -0.1]])
    u = torch.tensor([[0.99, 0.01, 0.9, 0.1]])  # would flip every bit when sampled
    assert sample_bits(logits, u).tolist() == [[-1.0, 1.0, -1.0, 1.0]]
    assert sample_bits(logits, u, top_k=1).tolist() == [[1.0, -1.0, 1.0, -1.0]]
    # top_p 0.8: bits 0, 1 are confident (p >= 0.8) -> greedy; bits 2, 3 keep their samples
    assert sample_bits(logits, u, top_p=0.8).tolist() == [[1.0, -1.0, -1.0, 1.0]]


def test_unconditional_and_null_text(model, quantizer):
    pyramid = generate(model, quantizer, None, None, LATENT, batch_size=2, generator=torch.Generator().manual_seed(0))
    assert pyramid.batch_size == 2
    states, mask = text(2)
    dropped, dmask = drop_text(model.null_text, states, mask, torch.tensor([True, False]))
    assert torch.equal(dropped[1], states[1]) and torch.equal(dmask[1], mask[1])
    assert torch.equal(dropped[0, 0], model.null_text[0]) and dmask[0].tolist() == [True] + [False] * 4


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "gen")
    assert (tmp_path / "gen" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = PyraTokGenerator.from_pretrained(tmp_path / "gen").eval()
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    cfg = GeneratorConfig(width=32, depth=1, heads=2, text_mode="prefix")
    assert PyraTokGenerator.from_generator_config(cfg).config.text_mode == "prefix"


def test_flip_bits_keeps_the_finest_level():
    bits = [torch.ones(2, 1, 2, 2, 16), torch.ones(2, 2, 4, 4, 16)]
    flipped = flip_bits(bits, 0.5, torch.Generator().manual_seed(0))
    assert 0.3 < (flipped[0] < 0).float().mean() < 0.7
    assert torch.equal(flipped[1], bits[1])


def test_overfit_50_steps(quantizer):
    """Two cached pyramids are memorised to >= 95% bit accuracy in 50 AdamW steps."""
    model = seeded(0, PyraTokGenerator, width=128, depth=2, heads=4, mlp_ratio=8.0).train()
    latents = torch.randn(2, 8, *LATENT, generator=torch.Generator().manual_seed(0))
    states, mask = text(2)
    batch = {"bits": quantizer(latents).pyramid.bits, "text_states": states, "text_mask": mask, "latent_grid": LATENT}
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.0)
    rng = torch.Generator().manual_seed(0)
    for _ in range(50):
        loss, _ = generator_loss(model, quantizer, batch, rng, cfg_dropout=0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, stats = generator_loss(model, quantizer, batch, rng, cfg_dropout=0.0)
    assert stats["bit_acc"] >= 0.95, {k: round(float(v), 4) for k, v in stats.items()}


def test_requests_past_memory_are_refused_up_front(model, quantizer, monkeypatch):
    states, mask = text(2)

    def need_for(latent_grid):
        return sampling_memory(model.generator_config(), quantizer.config, latent_grid, 2, text_len=states.shape[1],
                               output_type="latent").total

    need = need_for(LATENT)
    with pytest.raises(ValueError, match=r"needs about 0\.\d+ GB \(generator.memory\), more than the 0\.00 GB"):
        generate(model, quantizer, states, mask, LATENT, memory_limit=need // 2)
    steps = []
    monkeypatch.setattr(model, "forward_level", lambda *a, **k: steps.append(a))
    with pytest.raises(ValueError, match="more than"):
        generate(model, quantizer, states, mask, LATENT, memory_limit=need // 2)
    assert steps == []  # refused before any level ran
    monkeypatch.undo()
    pyramid = generate(model, quantizer, states, mask, LATENT, memory_limit=need + 1,
                       generator=torch.Generator().manual_seed(0))
    assert pyramid.batch_size == 2
    bigger = need_for((4, 8, 8))
    assert bigger > need  # the estimate follows the clip size


def grown_logits(model, grown, quantizer, folder):
    """Save `model`, check that `grown` (a larger config) refuses its weights without `grow` and loads them
    with it, and that it then computes the saved model's logits; returns them, `grown`'s, with gradients."""
    from pyratok.checkpoints import load_saved_weights

    model.save_pretrained(folder)
    with pytest.raises(ValueError, match="missing"):
        load_saved_weights(grown, folder)
    load_saved_weights(grown, folder, grow=True)
    latents = torch.randn(2, 8, *LATENT, generator=torch.Generator().manual_seed(3))
    inputs = teacher_forcing_inputs(quantizer, quantizer(latents).pyramid.bits, LATENT)
    states, mask = text(2)
    with torch.no_grad():
        before = model(inputs, states, mask)
    after = grown(inputs, states, mask)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b)
    return after


def test_a_generator_grows_deeper_from_a_saved_one(model, quantizer, tmp_path):
    """train.init_from + grow_from_init into more blocks: the new blocks start as the identity, so the grown
    model computes what the saved one did, and their output projections get gradients (they learn)."""
    deep = seeded(2, PyraTokGenerator, width=32, depth=4, heads=4)
    after = grown_logits(model, deep, quantizer, tmp_path / "shallow")
    sum(level.square().mean() for level in after).backward()
    for block in deep.transformer.blocks[2:]:
        for out in (block.attn.to_out, block.cross.to_out, block.mlp[-1]):
            assert out.weight.grad.abs().sum() > 0


def test_a_generator_grows_an_input_convolution_from_a_saved_one(model, quantizer, tmp_path):
    """grow_from_init into `input_conv`: the new convolution starts at zero, so the grown model computes
    what the saved one did, and it gets gradients (it learns)."""
    grown = seeded(2, PyraTokGenerator, width=32, depth=2, heads=4, input_conv=3)
    torch.nn.init.normal_(grown.transformer.local_input.conv.weight)  # so that loading has to zero it
    after = grown_logits(model, grown, quantizer, tmp_path / "plain")
    sum(level.square().mean() for level in after).backward()
    assert grown.transformer.local_input.conv.weight.grad.abs().sum() > 0


def test_finest_conv_the_transformer_stops_a_level_short_and_the_conv_draws_the_finest(conv_model, quantizer):
    assert conv_model.transformer.config.num_levels == 3 and conv_model.config.num_levels == 4
    states, mask = text()
    kwargs = dict(guidance_scale=3.0, negative_prompt_embeds=torch.randn(1, 3, 384))
    cached = generate(conv_model, quantizer, states, mask, LATENT, generator=gens([4, 5, 6]), **kwargs)
    uncached = generate(conv_model, quantizer, states, mask, LATENT, use_cache=False, generator=gens([4, 5, 6]), **kwargs)
    assert cached.grids == quantizer.grids_for(LATENT)
    assert all(torch.equal(a, b) for a, b in zip(cached.bits, uncached.bits))
    single = generate(conv_model, quantizer, states[1:2], mask[1:2], LATENT, generator=gens([5]), **kwargs)
    assert all(torch.equal(a[1:2], b) for a, b in zip(cached.bits, single.bits))
    torch.testing.assert_close(cached.latent, quantizer.reconstruct(cached.bits, LATENT))
    # guidance reaches the finest level through the conv's text input: same coarse levels, other finest bits
    plain = generate(conv_model, quantizer, states, mask, LATENT, guidance_schedule=[3.0, 3.0, 3.0, 1.0],
                     generator=gens([4, 5, 6]), negative_prompt_embeds=kwargs["negative_prompt_embeds"])
    assert all(torch.equal(a, b) for a, b in zip(cached.bits[:3], plain.bits[:3]))
    assert not torch.equal(cached.bits[3], plain.bits[3])


def test_finest_conv_save_load_and_memory_estimate(conv_model, quantizer, tmp_path):
    conv_model.save_pretrained(tmp_path / "gen")
    loaded = PyraTokGenerator.from_pretrained(tmp_path / "gen").eval()
    assert loaded.config.finest_head == "conv" and loaded.finest_conv is not None
    for (name, a), b in zip(conv_model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    states, mask = text(2)
    need = sampling_memory(conv_model.generator_config(), quantizer.config, LATENT, 2, text_len=5, output_type="latent").total
    with pytest.raises(ValueError, match="more than"):
        generate(conv_model, quantizer, states, mask, LATENT, memory_limit=need // 2)
    assert generate(conv_model, quantizer, states, mask, LATENT, memory_limit=need + 1,
                    generator=torch.Generator().manual_seed(0)).batch_size == 2


def conv_with_features(seed=1) -> PyraTokGenerator:
    model = seeded(seed, PyraTokGenerator, width=32, depth=2, heads=4, finest_head="conv", finest_conv_width=16,
                   finest_conv_blocks=1, finest_conv_features=True).eval()
    with torch.no_grad():  # the projection starts at zero; give it weights so that the features act
        seeded(seed, torch.nn.init.normal_, model.finest_conv.features.proj.weight)
    return model


def test_finest_conv_features_carry_the_transformer_into_the_finest_logits(quantizer):
    """finest_conv_features: the finest logits change when the transformer does, and the finest loss trains
    the transformer; without the features neither holds. Cached sampling keeps the features (bit-identical
    to the uncached pass) and its finest logits are the teacher-forced ones."""
    latents = torch.randn(2, 8, *LATENT, generator=torch.Generator().manual_seed(3))
    inputs = teacher_forcing_inputs(quantizer, quantizer(latents).pyramid.bits, LATENT)
    states, mask = text(2)
    for reads in (True, False):
        model = conv_with_features() if reads else seeded(1, PyraTokGenerator, width=32, depth=2, heads=4,
                                                          finest_head="conv", finest_conv_width=16, finest_conv_blocks=1)
        finest = model(inputs, states, mask)[-1]
        finest.square().mean().backward()
        grads = [p.grad for p in model.transformer.blocks[-1].parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads) == reads
        with torch.no_grad():
            for p in model.transformer.blocks[-1].parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
            changed = not torch.allclose(model(inputs, states, mask)[-1], finest)
        assert changed == reads
    model = conv_with_features()
    kwargs = dict(guidance_scale=3.0, negative_prompt_embeds=torch.randn(1, 3, 384))
    cached = generate(model, quantizer, *text(), LATENT, generator=gens([4, 5, 6]), **kwargs)
    uncached = generate(model, quantizer, *text(), LATENT, use_cache=False, generator=gens([4, 5, 6]), **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(cached.bits, uncached.bits))
    cache, steps = model.new_cache(), []
    with torch.no_grad():
        for step, x in enumerate(inputs):
            steps.append(model.forward_level(step, x, states, mask, cache))
        torch.testing.assert_close(steps[-1], model(inputs, states, mask)[-1])


def test_finest_conv_features_grow_from_a_saved_conv_generator(conv_model, quantizer, tmp_path):
    """train.init_from + grow_from_init: the features' projection starts at zero, so the grown model computes
    the saved conv generator's logits, and the projection gets a gradient (it learns)."""
    grown = conv_with_features(seed=2)
    after = grown_logits(conv_model, grown, quantizer, tmp_path / "conv")
    after[-1].square().mean().backward()
    assert grown.finest_conv.features.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bad, match", [
    (dict(finest_head="cnn"), "finest_head must be one of"),
    (dict(finest_head="conv", head="group_codes"), "head='group_codes'"),
    (dict(finest_head="conv", finest_passes=2), "finest_passes=2"),
    (dict(finest_head="conv", finest_conv_width=12), "got 12"),
    (dict(finest_conv_features=True), "needs finest_head='conv', got 'transformer'"),
])
def test_finest_conv_config_errors_name_the_value(bad, match):
    with pytest.raises(ValueError, match=match):
        GeneratorConfig(width=32, heads=4, **bad)


def test_the_conv_reads_where_an_edge_runs_and_what_the_caption_says():
    """Finest bits set by the finest input's local gradient (right neighbour minus left), one of them flipped
    by the caption. With no transformer blocks a token sees no other token's input, so only the conv head
    learns the edge; and only a head that reads the text learns the flipped bit."""
    grid = (2, 6, 6)

    def batch(g):  # level inputs, text, finest bits (b, t, h, w, 2)
        x = torch.randn(16, 8, *grid, generator=g)
        pad = torch.nn.functional.pad(x[:, 0], (1, 1))  # zeros beyond the edge; (b, t, h, w + 2)
        across = (pad[..., 2:] - pad[..., :-2]).sign()  # (b, t, h, w)
        states = torch.randn(16, 3, 384, generator=g)
        flip = states[:, :, 0].mean(1).sign()[:, None, None, None]  # (b, 1, 1, 1)
        coarse = [torch.randn(16, 8, 1, 1, 1, generator=g)]
        return coarse + [x], states, torch.stack([across, across * flip], -1)

    accuracy = {}
    for head in ("transformer", "conv"):
        model = seeded(0, PyraTokGenerator, width=32, depth=0, heads=4, num_levels=2, finest_head=head,
                       finest_conv_width=32, finest_conv_blocks=1).train()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(300):
            inputs, states, bits = batch(g)
            logits = model(inputs, states, drop_text=torch.zeros(16, dtype=torch.bool))[-1][..., :2]
            loss, _ = bitwise_loss([logits], [bits])
            opt.zero_grad()
            loss.backward()
            opt.step()
        inputs, states, bits = batch(torch.Generator().manual_seed(99))
        with torch.no_grad():
            hits = model(inputs, states, drop_text=torch.zeros(16, dtype=torch.bool))[-1][..., :2].sign() == bits
        accuracy[head] = [round(float(hits[..., i].float().mean()), 3) for i in range(2)]
    assert accuracy["conv"][0] > 0.9 and accuracy["conv"][1] > 0.85, accuracy
    assert max(accuracy["transformer"]) < 0.65, accuracy
