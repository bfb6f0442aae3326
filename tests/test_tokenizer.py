"""Tokenizer: shapes, taps, the shared binary codebook, text guidance, losses, save/load, tiling."""
from __future__ import annotations

import pytest
import torch

from factories import tiny_tokenizer

from pyratok import PyraTokTokenizer, TokenPyramid
from pyratok.data.shapes import ShapesDataset
from pyratok.objective import LossWeights, TokenizerObjective
from pyratok.pyramid import bits_to_indices, indices_to_bits, level_grids
from pyratok.quant_losses import grouped_entropy, usage_stats

def video(b=2, t=5, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


def text(b=2, s=6, d=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, s, d, generator=g), torch.ones(b, s, dtype=torch.bool)


@pytest.fixture(scope="module")
def model():
    return tiny_tokenizer()


@pytest.mark.parametrize("t", [1, 5, 17])
def test_encode_decode_shapes(model, t):
    v = video(t=t)
    pyramid = model.encode(v)
    latent = model.latent_grid(t, 32, 32)
    assert latent == (1 + (t - 1) // 4, 4, 4)
    assert pyramid.grids == level_grids(latent, [(4, 4, 4), (2, 2, 2), (1, 1, 1)])
    for bits in pyramid.bits:
        assert set(bits.unique().tolist()) <= {-1.0, 1.0}
        assert bits.shape[0] == 2 and bits.shape[-1] == 16
    assert pyramid.latent.shape == (2, 4, *latent)
    with torch.no_grad():
        out = model.decode(pyramid)
    assert out.shape == v.shape
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("shape", [(4, 32, 32), (5, 30, 32), (5, 32, 20), (0, 32, 32)])
def test_bad_sizes_name_the_value(model, shape):
    t, h, w = shape
    with pytest.raises(ValueError, match="must be"):
        model.encode(torch.zeros(1, 3, t, h, w))


def test_bad_rank_and_channels(model):
    with pytest.raises(ValueError, match="batch, 3, frames"):
        model.encode(torch.zeros(3, 5, 32, 32))
    with pytest.raises(ValueError, match="batch, 3, frames"):
        model.encode(torch.zeros(1, 4, 5, 32, 32))


def test_taps_present_at_several_depths(model):
    _, _, taps = model.encode_latent(video(t=17))
    assert len(taps) >= 2
    # Wan 2.1 taps after each spatial downsample: strides 2, 4, 8; causal time 17, 1 + 2*4, 1 + 4
    assert [tuple(t.shape[-2:]) for t in taps] == [(16, 16), (8, 8), (4, 4)]
    assert [t.shape[2] for t in taps] == [17, 9, 5]
    assert [t.shape[1] for t in taps] == model.quantizer.config.tap_channels


def test_wan22_layout_backbone_taps_and_decodes():
    """Wan 2.2's layout (2x2 pixels folded into channels, residual blocks): the parent VAE's geometry."""
    wan22 = {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 2], "temperal_downsample": [True, True],
             "is_residual": True, "patch_size": 2}
    model = tiny_tokenizer(backbone_config=wan22)
    assert (model.temporal_factor, model.spatial_factor) == (4, 8)
    z, _, taps = model.encode_latent(video(t=9))
    assert tuple(z.shape[2:]) == model.latent_grid(9, 32, 32) == (3, 4, 4)
    assert [tuple(t.shape[2:]) for t in taps] == [(5, 8, 8), (3, 4, 4)]  # strides 2x4x4 and 4x8x8 in pixels
    with torch.no_grad():
        free = model.decode_latent(z * 5, clamp=False)
        assert free.shape == (2, 3, 9, 32, 32)
        assert torch.allclose(free.clamp(-1, 1), model.decode_latent(z * 5), atol=1e-6)


@pytest.mark.parametrize("k", [8, 16, 32])
def test_bits_indices_round_trip(k):
    g = torch.Generator().manual_seed(k)
    bits = torch.randint(0, 2, (3, 2, 4, 4, k), generator=g).float() * 2 - 1
    idx = bits_to_indices(bits)
    assert idx.dtype == torch.int64 and int(idx.max()) < 2**k
    assert torch.equal(indices_to_bits(idx, k), bits)
    pyramid = TokenPyramid([bits, bits[:, :1]], (2, 4, 4))
    again = TokenPyramid.from_indices(pyramid.indices, k, (2, 4, 4))
    assert all(torch.equal(a, b) for a, b in zip(again.bits, pyramid.bits))


def test_indices_out_of_range():
    with pytest.raises(ValueError, match="indices must lie"):
        indices_to_bits(torch.tensor([16]), 4)


def test_k32_tokenizer_runs():
    model = tiny_tokenizer(quantizer_config={"num_bits": 32, "bits_per_group": 8})
    pyramid = model.encode(video(b=1))
    assert pyramid.num_bits == 32
    assert all(i.max() < 2**32 for i in pyramid.indices)
    assert model.decode(pyramid).shape == (1, 3, 5, 32, 32)


def test_caption_changes_tokens(model):
    v = video(b=1)
    a, mask = text(b=1, seed=1)
    b, _ = text(b=1, seed=2)
    pa, pb, pn = model.encode(v, a, mask), model.encode(v, b, mask), model.encode(v)
    changed_ab = sum(int((x != y).any(-1).sum()) for x, y in zip(pa.bits, pb.bits))
    changed_an = sum(int((x != y).any(-1).sum()) for x, y in zip(pa.bits, pn.bits))
    assert changed_ab > 0 and changed_an > 0
    # the same caption gives the same tokens
    assert all(torch.equal(x, y) for x, y in zip(pa.bits, model.encode(v, a, mask).bits))


def test_losses_finite_and_differentiable():
    model = tiny_tokenizer().train()
    objective = TokenizerObjective(model, LossWeights())
    states, mask = text()
    pooled = states.mean(1)
    terms, _ = objective(video(), states, mask, pooled, drop_text=torch.tensor([True, False]))
    for name in ("l1", "ssim", "commitment", "entropy", "align", "ar", "loss"):
        assert torch.isfinite(terms[name]), name
    terms["loss"].backward()
    for name in ("quantizer.to_bits.weight", "quantizer.text_attn.0.to_kv.weight", "prior.head.weight",
                 "alignment.bit_embed.weight", "backbone.encoder.conv_in.weight", "backbone.decoder.conv_out.weight"):
        grads = dict(model.named_parameters())
        if name in grads:
            assert grads[name].grad is not None and torch.isfinite(grads[name].grad).all(), name
    # the encoder also learns through the quantizer (straight-through) and the AR prior
    assert model.backbone.encoder.conv_in.weight.grad.abs().sum() > 0


def test_losses_stay_finite_float32_under_bf16_autocast():
    """accelerate's mixed_precision="bf16" autocasts the forward: SSIM and the quantizer terms must not
    be computed in bf16 (SSIM's variances cancelled to <= 0 there and the loss became -inf)."""
    model = tiny_tokenizer().train()
    clip = ShapesDataset("train", length=2, num_frames=5, height=32, width=32)
    batch = torch.stack([clip[i]["video"] for i in range(2)])
    states, mask = text()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms, _ = TokenizerObjective(model, LossWeights())(batch, states, mask, states.mean(1), sample_posterior=False)
    for name in ("ssim", "commitment", "entropy", "loss"):
        assert terms[name].dtype == torch.float32 and torch.isfinite(terms[name]), (name, terms[name])
    assert -1.0 <= float(terms["ssim"]) <= 1.0


def test_vae_stage_has_kl_and_fits_the_quantizer_to_a_detached_latent():
    model = tiny_tokenizer().train()
    terms, out = TokenizerObjective(model, LossWeights())(video(), quantize=False)
    assert out.quant is None and torch.isfinite(terms["kl"]) and torch.isfinite(terms["latent"])
    terms["loss"].backward()
    assert model.quantizer.from_bits.weight.grad.abs().sum() > 0  # LaPQ learns the latent meanwhile
    # the warm-up decodes the posterior mean unless asked to sample
    mean_only = model(video(), quantize=False, sample_posterior=False, generator=torch.Generator().manual_seed(0))
    again = model(video(), quantize=False, sample_posterior=False, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mean_only.recon, again.recon)
    sampled = model(video(), quantize=False, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(sampled.recon, mean_only.recon)


def test_latent_error_trains_lapq_towards_the_latent():
    torch.manual_seed(0)
    model = tiny_tokenizer()
    z = torch.randn(2, model.quantizer.config.latent_channels, 2, 4, 4)
    taps = [torch.randn(2, c, 2, 4, 4) for c in model.quantizer.config.tap_channels]
    opt = torch.optim.Adam(model.quantizer.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        err = model.quantizer(z, taps).latent_error
        first = err.item() if first is None else first
        opt.zero_grad()
        err.backward()
        opt.step()
    assert err.item() < 0.5 * first


def test_grouped_entropy_never_builds_2k_matrix():
    logits = torch.randn(1024, 32, requires_grad=True)
    loss = grouped_entropy(logits, bits_per_group=8)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None
    stats = usage_stats(torch.sign(logits.detach()), 8)
    assert 0 < stats["utilization"] <= 1 and 0 < stats["perplexity"] <= 1


def test_save_load_same_outputs(model, tmp_path):
    model.save_pretrained(tmp_path / "tok")
    again = PyraTokTokenizer.from_pretrained(tmp_path / "tok").eval()
    v = video()
    states, mask = text()
    p1, p2 = model.encode(v, states, mask), again.encode(v, states, mask)
    assert all(torch.equal(a, b) for a, b in zip(p1.bits, p2.bits))
    with torch.no_grad():
        assert torch.allclose(model.decode(p1), again.decode(p2), atol=1e-6)


def test_tiled_decode_matches_untiled(model):
    pyramid = model.encode(video(b=1, h=96, w=80))
    with torch.no_grad():
        full = model.decode(pyramid)
        model.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64,
                            tile_sample_stride_height=32, tile_sample_stride_width=32)
        try:
            tiled = model.decode(pyramid)
        finally:
            model.disable_tiling()
    mse = (full - tiled).pow(2).mean()
    assert 10 * torch.log10(4 / mse) > 30  # random weights: seams stay small


def test_token_text_similarity_shapes(model):
    pyramid = model.encode(video())
    maps = model.token_text_similarity(pyramid, torch.randn(3, 24))
    assert [m.shape for m in maps] == [(2, 3, *g) for g in pyramid.grids]
    assert all(m.abs().max() <= 1 + 1e-5 for m in maps)
    assert model.video_text_similarity(pyramid, torch.randn(3, 24)).shape == (2, 3)


def test_training_decode_is_unclamped(model):
    """A clamp would zero the gradient of every pixel pushed below -1 (black Shapes backgrounds)."""
    z = torch.randn(1, 4, 2, 4, 4) * 5
    with torch.no_grad():
        clamped = model.decode_latent(z)
        free = model.decode_latent(z, clamp=False)
    assert free.abs().max() > 1 and clamped.abs().max() <= 1
    assert torch.allclose(free.clamp(-1, 1), clamped, atol=1e-6)
    z.requires_grad_(True)
    out = model.decode_latent(z, clamp=False)
    (out.clamp_min(-1) - out).sum().backward()  # only out-of-range pixels contribute
    assert z.grad.abs().sum() > 0


def test_foreground_weighting_counts_object_pixels_more():
    from pyratok.losses import foreground_weights, reconstruction_loss

    target = torch.full((1, 3, 5, 16, 16), -1.0)
    target[:, 0, :, 4:8, 4:8] = 1.0  # a red square on black
    recon = torch.full_like(target, -1.0)  # all background: misses the object entirely
    w = foreground_weights(target, 10.0)
    assert w.shape == (1, 1, 5, 16, 16) and torch.allclose(w.mean(), torch.tensor(1.0))
    assert w[0, 0, 0, 5, 5] == 11 * w[0, 0, 0, 0, 0]
    plain = reconstruction_loss(recon, target, 0.0)["l1"]
    weighted = reconstruction_loss(recon, target, 0.0, foreground_weight=10.0)["l1"]
    assert weighted > 5 * plain
    everything = torch.rand(1, 3, 5, 16, 16) * 2 - 1 + 0.5  # mostly foreground: weights ~ uniform
    assert torch.allclose(foreground_weights(everything.clamp(-0.5, 1), 10.0), torch.ones(1, 1, 5, 16, 16))
    terms = reconstruction_loss(recon, target, 0.0, mse_weight=1.0)
    assert torch.allclose(terms["loss"], terms["l1"] + terms["mse"])
    # the low-pass term sees the region's colour: the 4x4 cell the square fills is all red
    low = reconstruction_loss(recon, target, 0.0, lowpass_weight=1.0)
    assert torch.allclose(low["lowpass"], torch.tensor(4.0 / 48))  # 1 of 16 cells x 3 channels is off by 2
    assert torch.allclose(low["loss"], low["l1"] + low["lowpass"])


def test_chroma_loss_weighs_green_magenta_like_red_blue_and_ignores_luminance():
    from pyratok.losses import OPPONENT_CHROMA, chroma, reconstruction_loss

    axes = OPPONENT_CHROMA
    assert torch.allclose(axes @ axes.t(), torch.eye(2), atol=1e-6)  # orthonormal
    assert torch.allclose(axes.sum(1), torch.zeros(2), atol=1e-6)  # blind to luminance (R = G = B)
    target = torch.zeros(1, 3, 1, 4, 4)
    grey = chroma(target + 0.3)
    assert torch.allclose(grey, torch.zeros_like(grey), atol=1e-6)
    # errors of equal size along green-magenta and along red-blue cost the same
    magenta_green = target + torch.tensor([-1.0, 2.0, -1.0]).view(1, 3, 1, 1, 1) / 6**0.5
    red_blue = target + torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1, 1) / 2**0.5
    g = reconstruction_loss(magenta_green, target, 0.0, chroma_weight=1.0)
    r = reconstruction_loss(red_blue, target, 0.0, chroma_weight=1.0)
    assert torch.allclose(g["chroma"], r["chroma"]) and g["chroma"] > 0
    assert torch.allclose(g["loss"], g["l1"] + g["chroma"])
