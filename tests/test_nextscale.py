"""Tests for pyratok.nextscale: per-level shapes, the block-causal mask, KV-cache equivalence,
grid-agnostic positions, gradient checkpointing and the bitwise loss (tiny models, one thread).
"""
from __future__ import annotations

import pytest
import torch

from pyratok.config import config_from_dict, config_to_dict, load_config, save_config
from pyratok.nextscale import NextScaleConfig, NextScaleTransformer, bitwise_loss
from pyratok.nextscale.reference import DenseBlockCausal, block_causal_mask

GRIDS = [(1, 1, 1), (1, 2, 2), (2, 3, 3), (3, 5, 4)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: faster, and deterministic
    yield
    torch.set_num_threads(threads)


def make_model(seed: int = 0, **overrides) -> NextScaleTransformer:
    cfg = NextScaleConfig(**{"width": 32, "depth": 2, "heads": 4, "num_levels": len(GRIDS), **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return NextScaleTransformer(cfg).eval()


def make_inputs(batch=2, grids=GRIDS, channels=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(batch, channels, *grid, generator=g) for grid in grids]
    inputs[0] = torch.zeros_like(inputs[0])  # nothing coarser than level 0
    text = torch.randn(batch, 6, 384, generator=g)
    mask = torch.ones(batch, 6, dtype=torch.bool)
    mask[1, 3:] = False  # the second prompt is shorter
    return inputs, text, mask


def test_config_round_trip(tmp_path):
    cfg = NextScaleConfig(width=64, text_mode="prefix", num_bits=32)
    assert config_from_dict(NextScaleConfig, config_to_dict(cfg)) == cfg
    assert load_config(NextScaleConfig, save_config(cfg, tmp_path / "ns.yaml")) == cfg


@pytest.mark.parametrize(
    "kwargs, match",
    [({"width": 30, "heads": 4}, "width=30"), ({"text_mode": "concat"}, "'concat'"),
     ({"attn_backend": "flash"}, "'flash'"), ({"num_levels": 0}, "num_levels"), ({"dropout": 1.0}, "dropout"),
     ({"input_conv": 2}, "input_conv.*got 2"), ({"input_conv": -1}, "got -1")],
)
def test_config_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NextScaleConfig(**kwargs)


def test_block_causal_mask_exact():
    mask = block_causal_mask([1, 2], prefix_len=2)
    # rows: text0 text1 | l0 | l1 l1 ; True = may attend
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    sizes = [1, 4, 9]
    m = block_causal_mask(sizes)
    level = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    assert torch.equal(m, level[None, :] <= level[:, None])


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_shapes_per_level(mode):
    model = make_model(text_mode=mode)
    inputs, text, mask = make_inputs()
    logits = model(inputs, text, mask)
    assert [tuple(l.shape) for l in logits] == [(2, *g, 16) for g in GRIDS]
    assert all(torch.isfinite(l).all() for l in logits)
    assert len(model(inputs[:2], text, mask)) == 2  # a partial pyramid works too
    assert len(model(inputs, None, None)) == len(GRIDS)  # and no text at all


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_no_token_sees_a_finer_level(mode):
    model = make_model(text_mode=mode)
    inputs, text, mask = make_inputs()
    base = model(inputs, text, mask)
    perturbed = list(inputs)
    perturbed[2] = inputs[2] + 5.0 * torch.randn_like(inputs[2])
    out = model(perturbed, text, mask)
    for level in (0, 1):
        assert torch.equal(out[level], base[level]), f"level {level} saw level 2"
    assert not torch.allclose(out[2], base[2])  # its own level is visible ...
    assert not torch.allclose(out[3], base[3])  # ... and so is every coarser one


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_padded_text_is_ignored(mode):
    model = make_model(text_mode=mode)
    inputs, text, mask = make_inputs()
    noisy = text.clone()
    noisy[1, 3:] = 100.0  # masked-out positions of prompt 1
    a, b = model(inputs, text, mask), model(inputs, noisy, mask)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_cached_equals_uncached(mode):
    model = make_model(text_mode=mode, input_conv=3)
    torch.nn.init.normal_(model.local_input.conv.weight, std=0.1)  # it starts at zero
    inputs, text, mask = make_inputs()
    full = model(inputs, text, mask)
    cache = model.new_cache(batch=2)
    for level, x in enumerate(inputs):
        step = model.forward_level(level, x, text, mask, cache)
        assert (step - full[level]).abs().max() <= 1e-4
    assert cache.levels_done == len(GRIDS)
    assert cache.keys[0].shape[2] == sum(g[0] * g[1] * g[2] for g in GRIDS) + (6 if mode == "prefix" else 0)


def test_cache_rejects_skipped_levels_and_wrong_batch():
    model = make_model()
    inputs, text, mask = make_inputs()
    cache = model.new_cache(batch=2)
    with pytest.raises(ValueError, match="next level must be 0, got 1"):
        model.forward_level(1, inputs[1], text, mask, cache)
    with pytest.raises(ValueError, match="batch 2"):
        model.forward_level(0, inputs[0][:1], text[:1], mask[:1], cache)


def test_larger_grids_at_inference():
    model = make_model()
    big = [(1, 2, 2), (2, 4, 4), (3, 8, 8), (5, 16, 12)]
    inputs, text, mask = make_inputs(grids=big)
    logits = model(inputs, text, mask)
    assert [tuple(l.shape[1:4]) for l in logits] == big


def test_input_errors_name_the_value():
    model = make_model(text_mode="prefix", max_text_len=4)
    inputs, text, mask = make_inputs()
    with pytest.raises(ValueError, match="text length 6 exceeds max_text_len=4"):
        model(inputs, text, mask)
    with pytest.raises(ValueError, match=r"\(b, 8, t, h, w\)"):
        model([torch.zeros(2, 3, 1, 1, 1)], None, None)
    with pytest.raises(ValueError, match="level 4"):
        model(inputs + [inputs[-1]], None, None)


def test_gradient_checkpointing_gives_the_same_gradients():
    inputs, text, mask = make_inputs()
    grads = []
    for ckpt in (False, True):
        model = make_model(gradient_checkpointing=ckpt).train()
        loss = sum(l.square().mean() for l in model(inputs, text, mask))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_bitwise_head_size_and_loss():
    model = make_model(num_bits=32)
    inputs, text, mask = make_inputs()
    logits = model(inputs, text, mask)
    assert logits[-1].shape[-1] == 32
    assert model.head.weight.shape == (32, 32)  # K logits per token, not 2^K
    bits = [torch.where(l > 0, 1.0, -1.0) for l in logits]
    loss, stats = bitwise_loss(logits, bits)
    assert stats["bit_acc"] == 1.0 and all(stats[f"bit_acc/level{l}"] == 1.0 for l in range(4))
    loss.backward()
    with pytest.raises(ValueError, match="level 0"):
        bitwise_loss(logits[:1], [bits[1]])


def test_empty_text_row_is_an_error():
    model = make_model()
    inputs, text, mask = make_inputs()
    mask[1] = False
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        model(inputs, text, mask)


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_per_level_attention_equals_the_dense_mask_reference(mode):
    model = make_model(text_mode=mode).train()  # train(): gradients too (dropout is 0)
    inputs, text, mask = make_inputs()
    new = model(inputs, text, mask)
    ref = model(inputs, text, mask, layout=DenseBlockCausal)
    for a, b in zip(new, ref):
        assert (a - b).abs().max() <= 1e-5
    grads = []
    for logits in (new, ref):
        model.zero_grad()
        sum(l.square().mean() for l in logits).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert (grads[0] - grads[1]).abs().max() <= 1e-5


@pytest.mark.parametrize("mode", ["cross", "prefix"])
def test_attention_never_builds_a_token_by_token_mask(mode, monkeypatch):
    import torch.nn.functional as F

    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen.append((q.shape[2], k.shape[2], None if attn_mask is None else tuple(attn_mask.shape)))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = make_model(text_mode=mode)
    inputs, text, mask = make_inputs()
    model(inputs, text, mask)
    cache = model.new_cache(batch=2)
    for level, x in enumerate(inputs):
        model.forward_level(level, x, text, mask, cache)
    assert seen
    assert all(m is None or m[-2] == 1 for _, _, m in seen), seen  # key padding only, never (n, m)
    n_total = sum(g[0] * g[1] * g[2] for g in GRIDS)
    self_attn = [n for n, m, _ in seen if m != text.shape[1]]  # cross-attention: all queries vs the text
    assert max(self_attn) < n_total  # self-attention queries go level by level, never all at once


def test_dense_reference_uses_a_token_by_token_mask(monkeypatch):
    """The spy above can tell: the reference path does build (n, n)."""
    import torch.nn.functional as F

    shapes = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda q, k, v, attn_mask=None, **kw: shapes.append(attn_mask.shape) or sdpa(q, k, v, attn_mask, **kw))
    model = make_model(text_mode="prefix")
    inputs, text, mask = make_inputs()
    model(inputs, text, mask, layout=DenseBlockCausal)
    assert any(s[-2] > 1 for s in shapes)


def test_input_conv_lets_a_token_read_its_neighbours_inputs():
    """Bits set by the input's local gradient (the sign of the right neighbour minus the left one, and of
    the one below minus the one above): with no blocks (depth 0) only `input_conv` lets a token see
    another's input, and only with it is the task learned."""
    grid = (2, 6, 6)

    def batch(g):  # (b, c, t, h, w) inputs, (b, t, h, w, 2) bits in {-1, +1}
        x = torch.randn(16, 2, *grid, generator=g)
        pad = torch.nn.functional.pad(x[:, 0], (1, 1, 1, 1))  # zeros beyond the edge; (b, t, h + 2, w + 2)
        across = pad[:, :, 1:-1, 2:] - pad[:, :, 1:-1, :-2]
        down = pad[:, :, 2:, 1:-1] - pad[:, :, :-2, 1:-1]
        return x, torch.stack([across, down], -1).sign()

    accuracy = {}
    for kernel in (0, 3):
        model = make_model(depth=0, num_levels=1, latent_channels=2, num_bits=2, input_conv=kernel).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(0)
        for _ in range(300):
            x, bits = batch(g)
            loss, _ = bitwise_loss(model([x]), [bits])
            opt.zero_grad()
            loss.backward()
            opt.step()
        x, bits = batch(torch.Generator().manual_seed(99))
        with torch.no_grad():
            accuracy[kernel] = float((model([x])[0].sign() == bits).float().mean())
    assert accuracy[3] > 0.9 and accuracy[0] < 0.65, accuracy
