"""Memory-bounded tiled decoding for the backbone video decoder (diffusers `AutoencoderKLWan`).

Implements the "tiled for large frames" decode of the PyraTok data flow (the paper's 4K/8K claim):
the latent is split into overlapping spatial tiles, each tile is decoded with its own causal feature
cache, and written straight into one preallocated output with linear blending ramps.

Letters: b - batch, c - latent channels, t - latent frames, h, w - latent height/width, k - tiles in
a group; T = 1 + f_t (t - 1) output frames (f_t = 4 for Wan 2.1), H = s h, W = s w (s = 8).

Design, and why:
- Peak memory is one tile's activations for one decoder call plus the output tensor itself. Tiles are
  never collected (diffusers' `tiled_decode` keeps every decoded tile, then concatenates).
- Tile layout per axis: the fewest tiles no larger than `tile_sample_min_*` that overlap by at least
  `tile_sample_min_* - tile_sample_stride_*`, all of one size and spread evenly, so no thin sliver tile
  is left at the far edge: the work beyond the untiled decode is (n_tiles - 1) * overlap per axis.
- Blending weights are separable (row ramp x column ramp) and normalised per axis over all tiles, so
  they sum to exactly 1 at every pixel: tiles are added in, with no weight map and no final division.
  The ramps skip the quarter of the overlap next to each tile's cut edge, where the decoder saw zero
  padding instead of the neighbours (+2.7 dB at an 8-latent overlap, measured).
- Time: in a tile, latent frame 0 is decoded alone (the causal decoder's first chunk), then
  `temporal_chunk` latent frames per call, carrying the tile's feature cache across calls, so any
  chunking equals the frame-by-frame decode. Time is the inner loop (per tile) on purpose: an outer
  time loop over all tiles would need every tile's feature cache alive at once, about as much memory
  as the untiled decode's caches, which defeats the point. Memory over time is bounded anyway, since
  the decoder only ever sees `temporal_chunk` latent frames at once.
- Latent frame 0 of `first_frame_batch` tiles goes through the decoder as one batch: it makes one
  output frame where later latent frames make four, so batching two costs no extra peak, and on CPU it
  avoids torch's unthreaded im2col conv3d path that batch-1 convolutions with few frames fall into
  (measured 3x slower per pixel than the oneDNN path for 400-px tiles).
- `out` may live on another device than `z` (e.g. pinned CPU memory for a GPU decode): then the
  accelerator only ever holds one tile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d
from einops import rearrange
from torch import Tensor

__all__ = ["TilingConfig", "tiled_decode", "tile_spans", "tile_group_shape", "blend_weights"]

_VAE_SPATIAL_FACTOR = 8  # Wan 2.1; a patchified VAE (Wan 2.2: 16) is checked again in tiled_decode


@dataclass
class TilingConfig:
    """Tile sizes in output pixels (diffusers' names), each a multiple of the VAE spatial factor.

    `tile_sample_min_*` is the largest tile, `tile_sample_stride_*` the largest step between tiles
    (overlap = min - stride, at least). Defaults, from `bench/bench_tiling.py` on the tiny backbone: 416-px
    tiles (<= 0.83 GB of activations measured; 448 px reached 0.97) with a 48-px (6 latent) overlap, for
    >= 40 dB against the untiled decode (42.7-43.3 dB measured at 512 px and 1080p).
    `temporal_chunk`: latent frames per decoder call after frame 0 (None: 1, the lowest memory).
    `first_frame_batch`: tiles whose latent frame 0 is decoded in one call (see the module notes).
    """

    tile_sample_min_height: int = 416
    tile_sample_min_width: int = 416
    tile_sample_stride_height: int = 368
    tile_sample_stride_width: int = 368
    temporal_chunk: int | None = None
    first_frame_batch: int = 2

    def __post_init__(self) -> None:
        self.validate(_VAE_SPATIAL_FACTOR)

    def validate(self, spatial_factor: int) -> None:
        """Raise ValueError naming the first bad value (not a positive multiple of the factor, stride > tile)."""
        for name in ("tile_sample_min_height", "tile_sample_min_width",
                     "tile_sample_stride_height", "tile_sample_stride_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % spatial_factor:
                raise ValueError(
                    f"{name}={value!r} must be a positive multiple of the VAE spatial factor {spatial_factor}"
                )
        for axis in ("height", "width"):
            tile, stride = getattr(self, f"tile_sample_min_{axis}"), getattr(self, f"tile_sample_stride_{axis}")
            if stride > tile:
                raise ValueError(
                    f"tile_sample_stride_{axis}={stride} is larger than tile_sample_min_{axis}={tile}: "
                    "tiles would leave gaps"
                )
        chunk = self.temporal_chunk
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"temporal_chunk={chunk!r} must be None or a positive int")
        batch = self.first_frame_batch
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"first_frame_batch={batch!r} must be a positive int")


def tile_spans(length: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) of the fewest tiles of size <= `tile` covering `length` with overlap >= tile - stride.

    Units are whatever the caller uses (latent cells here). Tiles have equal size (ceil) and evenly spread
    starts, so the overlap is never below the requested one and no sliver is left at the end.
    """
    if length <= tile:
        return [(0, length)]
    overlap = tile - stride
    n = math.ceil((length - overlap) / stride)
    size = math.ceil((length + (n - 1) * overlap) / n)  # <= tile because n * stride + overlap >= length
    starts = [(i * (length - size)) // (n - 1) for i in range(n)]
    return [(s, s + size) for s in starts]


def _tile_grid(h: int, w: int, config: TilingConfig, spatial: int) -> tuple[list, list]:
    """Row and column spans (latent cells) of the tiles of an h x w latent."""
    rows = tile_spans(h, config.tile_sample_min_height // spatial, config.tile_sample_stride_height // spatial)
    cols = tile_spans(w, config.tile_sample_min_width // spatial, config.tile_sample_stride_width // spatial)
    return rows, cols


def tile_group_shape(batch: int, h: int, w: int, config: TilingConfig, spatial: int) -> tuple[int, int, int]:
    """(tiles decoded together, tile height, tile width) of the largest group `tiled_decode` makes for a
    (batch, c, t, h, w) latent, in latent cells. Groups decode one after another into the preallocated
    video, all tiles have one size, so the decode's peak is the video plus this group's."""
    rows, cols = _tile_grid(h, w, config, spatial)
    tiles = min(config.first_frame_batch, batch * len(rows) * len(cols))
    return tiles, rows[0][1] - rows[0][0], cols[0][1] - cols[0][0]


def blend_weights(spans: list[tuple[int, int]], scale: int, margin: float = 0.25) -> list[Tensor]:
    """Per-tile 1-D blend weights over the tile's `scale`-times upsampled extent, summing to 1 everywhere.

    Where two tiles overlap, each tile's weight ramps linearly between 0 and 1 across the central part of
    the overlap, skipping `margin` of the overlap at either end (weight 0 next to the tile's own cut edge,
    where the decoder saw zero padding instead of the neighbours and is least right). The weights are
    then normalised by their sum over all tiles. `margin` is in [0, 0.5); where tiles overlap so much
    that some pixel would get no weight at all, the plain full-overlap ramps (margin 0) are used.
    """
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin={margin!r} must be in [0, 0.5)")
    px = [(a * scale, b * scale) for a, b in spans]
    raw = []
    for i, (a, b) in enumerate(px):
        pos = torch.arange(a, b, dtype=torch.float64) + 0.5  # pixel centres
        w = torch.ones(b - a, dtype=torch.float64)
        if i > 0 and px[i - 1][1] > a:  # ramp in across the overlap [a, end of previous tile)
            w = torch.minimum(w, _ramp(pos - a, px[i - 1][1] - a, margin))
        if i + 1 < len(px) and px[i + 1][0] < b:  # ramp out across the overlap [start of next tile, b)
            w = torch.minimum(w, _ramp(b - pos, b - px[i + 1][0], margin))
        raw.append(w)
    total = torch.zeros(px[-1][1], dtype=torch.float64)
    for (a, b), w in zip(px, raw):
        total[a:b] += w
    if margin > 0 and not (total > 0).all():
        return blend_weights(spans, scale, margin=0.0)
    return [(w / total[a:b]).float() for (a, b), w in zip(px, raw)]


def _ramp(dist: Tensor, overlap: int, margin: float) -> Tensor:
    """0 for the first `margin * overlap` pixels from the cut edge, then linear up to 1 at the far margin."""
    skip = math.floor(margin * overlap)
    return ((dist - skip) / (overlap - 2 * skip)).clamp(0.0, 1.0)


def _check_out(out: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {shape}")
    if not out.is_floating_point():
        raise ValueError(f"out must be a floating-point tensor, got {out.dtype}")


def tiled_decode(
    vae: AutoencoderKLWan, z: Tensor, config: TilingConfig | None = None, out: Tensor | None = None
) -> Tensor:
    """Decode latent z (b, c, t, h, w) to video (b, 3, T, H, W) in [-1, 1], tile by tile.

    Same result as `vae.decode(z).sample` up to the tile seams (the decoder's attention and zero padding
    see only the tile). Gradients flow if grad mode is on (the caller decides; no `no_grad` is forced),
    though memory is then no longer bounded. `out`, if given, is zeroed, filled and returned; it may be on
    another device or dtype than z. Blending happens before the final clamp, as in the untiled decode.
    """
    config = config or TilingConfig()
    cfg = vae.config
    patch = cfg.patch_size or 1
    dec_factor = 2 ** (len(cfg.dim_mult) - 1)  # the decoder's own spatial upsampling
    spatial = dec_factor * patch
    config.validate(spatial)
    if z.dim() != 5:
        raise ValueError(f"z must be (b, c, t, h, w), got shape {tuple(z.shape)}")
    b, _, t, h, w = z.shape
    if t < 1 or h < 1 or w < 1:
        raise ValueError(f"z must have at least one latent frame, row and column, got shape {tuple(z.shape)}")
    t_factor = 2 ** sum(bool(d) for d in cfg.temperal_downsample)
    out_channels = cfg.out_channels // (patch * patch)
    shape = (b, out_channels, 1 + t_factor * (t - 1), h * spatial, w * spatial)
    if out is None:
        out = torch.zeros(shape, dtype=z.dtype, device=z.device)
    else:
        _check_out(out, shape)
        out.zero_()

    hook = getattr(vae, "_hf_hook", None)  # accelerate model offload, as `vae.decode` does
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(vae)

    rows, cols = _tile_grid(h, w, config, spatial)
    row_w = [m.to(out.device, out.dtype) for m in blend_weights(rows, spatial)]  # precomputed once
    col_w = [m.to(out.device, out.dtype) for m in blend_weights(cols, spatial)]
    n_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())  # cache slots

    # Every tile has the same shape (tile_spans), so a group of them can share one decoder call.
    jobs = [(i, r, c) for i in range(b) for r in range(len(rows)) for c in range(len(cols))]
    for g in range(0, len(jobs), config.first_frame_batch):
        group = jobs[g : g + config.first_frame_batch]
        z_tiles = torch.cat([z[i : i + 1, :, :, slice(*rows[r]), slice(*cols[c])] for i, r, c in group])
        targets = [
            _Target(i, slice(rows[r][0] * spatial, rows[r][1] * spatial),
                    slice(cols[c][0] * spatial, cols[c][1] * spatial), row_w[r], col_w[c])
            for i, r, c in group
        ]
        _decode_group(vae, z_tiles, out, targets, config.temporal_chunk or 1, n_convs, patch)
    return out.clamp_(-1.0, 1.0)


class _Target(NamedTuple):
    """Where a tile goes: sample i, output rows/cols, and its row (H_tile,) and column (W_tile,) weights."""

    i: int
    rows: slice
    cols: slice
    row_w: Tensor
    col_w: Tensor


def _decode_group(
    vae: AutoencoderKLWan, z_tiles: Tensor, out: Tensor, targets: list[_Target], chunk: int, n_convs: int,
    patch: int,
) -> None:
    """Decode k equal-shape latent tiles (k, c, t, h, w) and add each, weighted, into `out` at its target.

    Latent frame 0 of all k tiles goes through the decoder as one batch (it makes one output frame, so this
    costs about what a later 4-frame chunk of one tile costs); then the cache is split and each tile decodes
    its later frames alone, `chunk` latent frames per call, carrying its own slice of the causal cache.
    """
    cache: list = [None] * n_convs  # causal feature cache of the k tiles, batched
    dec = _decoder_call(vae, z_tiles[:, :, :1], cache, first_chunk=True, patch=patch)  # (k, C, 1, H_t, W_t)
    for dec_j, target in zip(dec, targets):
        _accumulate(out, dec_j, target, 0)
    first = dec.shape[2]
    del dec
    t = z_tiles.shape[2]
    for j, target in enumerate(targets):
        cache_j = [c[j : j + 1] if isinstance(c, Tensor) else c for c in cache]  # "Rep"/None stay as they are
        f0 = first
        for s in range(1, t, chunk):
            dec = _decoder_call(vae, z_tiles[j : j + 1, :, s : s + chunk], cache_j, first_chunk=False, patch=patch)
            _accumulate(out, dec[0], target, f0)
            f0 += dec.shape[2]


def _decoder_call(vae: AutoencoderKLWan, z: Tensor, cache: list, first_chunk: bool, patch: int) -> Tensor:
    """One causal step of the Wan decoder on latent frames z (k, c, t', h, w) -> (k, 3, f, H, W), cache updated."""
    dec = vae.decoder(vae.post_quant_conv(z), feat_cache=cache, feat_idx=[0], first_chunk=first_chunk)
    if patch > 1:
        dec = rearrange(dec, "k (c pw ph) f h w -> k c f (h ph) (w pw)", pw=patch, ph=patch)
    return dec


def _accumulate(out: Tensor, dec: Tensor, target: _Target, f0: int) -> None:
    """out[i, :, f0 : f0 + f, rows, cols] += dec (C, f, H_t, W_t) * row weights * column weights."""
    dec = dec.to(out.device, out.dtype)
    index = (target.i, slice(None), slice(f0, f0 + dec.shape[1]), target.rows, target.cols)
    if dec.requires_grad:  # autograd: no in-place on the decoder's output
        out[index] += dec * target.row_w[:, None] * target.col_w
    else:
        out[index] += dec.mul_(target.row_w[:, None]).mul_(target.col_w)
