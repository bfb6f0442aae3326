"""Tests for pyratok.tiling: tiled decoding agrees with the untiled Wan decode.

Exact checks of the tiling logic (positions, blend weights, time offsets, causal cache, grouping) use a
Wan VAE whose decoder is swapped for a spatially pointwise stand-in, for which tiling is lossless; the
real tiny decoder then checks the call protocol (exact for one tile) and the seams (PSNR >= 40 dB).
"""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d
from einops import repeat
from torch import nn

from pyratok.tiling import TilingConfig, blend_weights, tile_spans, tiled_decode

SMALL = dict(tile_sample_min_height=64, tile_sample_min_width=64,  # 8-latent tiles, 3-latent overlap
             tile_sample_stride_height=40, tile_sample_stride_width=40)


def tiny_wan(**kwargs) -> AutoencoderKLWan:
    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                            temperal_downsample=[False, True, True], **kwargs).eval()


class PointwiseCausalDecoder(nn.Module):
    """Stand-in for WanDecoder3d with its call protocol: pointwise in space (so tiles blend losslessly),
    causal in time (each latent frame also sees the previous one through the feature cache), and 1 output
    frame for the first chunk, 4 for every later latent frame."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.mix = WanCausalConv3d(z_dim, 3, 1)  # one cache slot

    def forward(self, x, feat_cache=None, feat_idx=(0,), first_chunk=False):
        idx = feat_idx[0]
        feat_idx[0] += 1
        frames = []
        for k in range(x.shape[2]):
            cur = x[:, :, k : k + 1]
            prev = feat_cache[idx]
            y = torch.tanh(self.mix(cur) + (0.0 if prev is None else 0.5 * self.mix(prev)))  # (b, 3, 1, h, w)
            if not (first_chunk and k == 0):
                y = y * torch.linspace(0.4, 1.0, 4).view(1, 1, 4, 1, 1)  # 4 distinct sub-frames
            frames.append(y)
            feat_cache[idx] = cur
        return repeat(torch.cat(frames, 2), "b c f h w -> b c f (h 8) (w 8)")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLWan:
    return tiny_wan()


@pytest.fixture(scope="module")
def pointwise_vae() -> AutoencoderKLWan:
    vae = tiny_wan()
    vae.decoder = PointwiseCausalDecoder(vae.config.z_dim)
    return vae


def latent(b: int, t: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 4, t, h, w, generator=torch.Generator().manual_seed(seed))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)  # values in [-1, 1]


@pytest.mark.parametrize(
    "shape, chunk, first_frame_batch",
    [((1, 2, 12, 17), None, 2),  # odd latent sizes, not multiples of the stride
     ((1, 1, 13, 11), None, 2),  # single latent frame
     ((1, 1, 13, 11), None, 5),  # single frame, one group larger than the tile count
     ((2, 3, 9, 14), None, 1),  # batch of two, no first-frame batching
     ((2, 3, 9, 14), 2, 5),  # groups straddle the two samples; 2-frame chunks
     ((1, 4, 7, 23), 3, 2)],  # one row of tiles; a 3-frame chunk
    ids=["t2-odd", "t1", "t1-big-group", "b2", "b2-straddle-chunk2", "one-row-chunk3"],
)
def test_tiling_is_lossless_for_a_pointwise_decoder(pointwise_vae, shape, chunk, first_frame_batch):
    z = latent(*shape)
    assert len(tile_spans(shape[2], 8, 5)) * len(tile_spans(shape[3], 8, 5)) >= 3, "several tiles"
    config = TilingConfig(**SMALL, temporal_chunk=chunk, first_frame_batch=first_frame_batch)
    with torch.no_grad():
        ref = pointwise_vae.decode(z).sample
        out = tiled_decode(pointwise_vae, z, config)
    assert out.shape == ref.shape == (shape[0], 3, 1 + 4 * (shape[1] - 1), 8 * shape[2], 8 * shape[3])
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_out_is_filled_in_place(pointwise_vae):
    z = latent(1, 2, 9, 10)
    out = torch.full((1, 3, 5, 72, 80), 7.0)  # stale values must be overwritten, not added to
    with torch.no_grad():
        ref = pointwise_vae.decode(z).sample
        got = tiled_decode(pointwise_vae, z, TilingConfig(**SMALL), out=out)
    assert got is out
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="out has shape"):
        tiled_decode(pointwise_vae, z, TilingConfig(**SMALL), out=torch.zeros(1, 3, 5, 72, 88))


def test_one_tile_is_exactly_the_untiled_decode(vae):
    z = latent(1, 3, 4, 5)
    with torch.no_grad():
        ref = vae.decode(z).sample
        out = tiled_decode(vae, z, TilingConfig())  # 448-px tiles: the whole latent is one tile
        chunked = tiled_decode(vae, z, TilingConfig(temporal_chunk=2))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked, ref, rtol=0, atol=1e-5)


def test_temporal_chunks_carry_the_real_cache_across_tiles(vae):
    z = latent(1, 3, 4, 9)  # two tiles across
    with torch.no_grad():
        ref = tiled_decode(vae, z, TilingConfig(**SMALL))
        out = tiled_decode(vae, z, TilingConfig(**SMALL, temporal_chunk=2, first_frame_batch=1))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "shape, min_db",
    [((1, 21, 23), 40.0),  # 2 x 2 tiles of 16 latent cells with an 8-cell overlap
     ((2, 13, 31), 38.0)],  # 1 x 3 tiles; later frames of this random 8-channel decoder spread errors further
)
def test_real_decoder_seams_are_small(vae, shape, min_db):
    z = latent(1, *shape)
    with torch.no_grad():
        ref = vae.decode(z).sample
        out = tiled_decode(vae, z, TilingConfig(128, 128, 64, 64))
    assert out.min() >= -1 and out.max() <= 1
    assert psnr(out, ref) >= min_db


def test_grad_mode_is_respected(vae):
    z = latent(1, 1, 4, 9).requires_grad_()
    with torch.no_grad():
        assert not tiled_decode(vae, z, TilingConfig(**SMALL)).requires_grad
    out = tiled_decode(vae, z, TilingConfig(**SMALL))
    out.square().mean().backward()
    assert z.grad is not None and z.grad[..., :5].abs().sum() > 0 and z.grad[..., 5:].abs().sum() > 0


def test_patchified_vae_decodes_the_same_way():
    """A Wan 2.2-style VAE (residual blocks, 2x2 patches, spatial factor 16)."""
    vae = tiny_wan(is_residual=True, patch_size=2, in_channels=12, out_channels=12, scale_factor_spatial=16)
    z = latent(1, 2, 3, 5)
    with torch.no_grad():
        ref = vae.decode(z).sample
        out = tiled_decode(vae, z, TilingConfig())
    assert out.shape == ref.shape == (1, 3, 5, 48, 80)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    vae.decoder = PointwiseCausalDecoder(4)
    vae.decoder.mix = WanCausalConv3d(4, 12, 1)  # 12 channels = 3 colours x 2 x 2 patch
    with torch.no_grad():
        ref = vae.decode(z).sample
        out = tiled_decode(vae, z, TilingConfig(32, 32, 16, 16))  # 2-latent tiles: 2 x 4 of them
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="tile_sample_min_height=56"):
        tiled_decode(vae, z, TilingConfig(56, 64, 32, 32))  # a multiple of 8 but not of this VAE's 16


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(tile_sample_min_height=500), "tile_sample_min_height=500"),
     (dict(tile_sample_min_width=0), "tile_sample_min_width=0"),
     (dict(tile_sample_stride_height=-8), "tile_sample_stride_height=-8"),
     (dict(tile_sample_stride_width=100), "tile_sample_stride_width=100"),
     (dict(tile_sample_stride_width=520), "tile_sample_stride_width=520"),  # stride > tile leaves gaps
     (dict(temporal_chunk=0), "temporal_chunk=0"),
     (dict(first_frame_batch=0), "first_frame_batch=0")],
)
def test_bad_config_raises_naming_the_value(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TilingConfig(**kwargs)


@pytest.mark.parametrize("length", [1, 7, 8, 9, 17, 64, 65, 135, 240, 541])
@pytest.mark.parametrize("tile, stride", [(8, 5), (8, 8), (56, 50), (64, 56)])
def test_tile_spans_cover_with_the_requested_overlap(length, tile, stride):
    spans = tile_spans(length, tile, stride)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert len({b - a for a, b in spans}) == 1, "all tiles have one size (so they batch)"
    assert all(b - a <= tile for a, b in spans)
    assert all(b0 - a1 >= tile - stride for (_, b0), (a1, _) in zip(spans, spans[1:]))
    n_min = 1 if length <= tile else math.ceil((length - (tile - stride)) / stride)
    assert len(spans) == n_min


@pytest.mark.parametrize("margin", [0.0, 0.25, 0.45])
@pytest.mark.parametrize("tile, stride", [(8, 5), (8, 1), (6, 6)], ids=["overlap", "heavy-overlap", "no-overlap"])
def test_blend_weights_sum_to_one(margin, tile, stride):
    spans = tile_spans(37, tile, stride)
    weights = blend_weights(spans, 8, margin)
    total = torch.zeros(37 * 8)
    for (a, b), w in zip(spans, weights):
        assert w.shape == (8 * (b - a),) and (w >= 0).all()
        total[8 * a : 8 * b] += w
    torch.testing.assert_close(total, torch.ones_like(total))
