"""The video VAE backbone: diffusers' `AutoencoderKLWan` plus encoder taps at several depths.

Implements the "pretrained video VAE" of PyraTok §3.1 and the lateral feature taps that LaPQ
quantizes. Taps are forward hooks on `encoder.down_blocks[i]`; Wan encodes causally in chunks
(frame 0, then 4 frames at a time), so each hook fires once per chunk and the chunks are
concatenated along time. Letters: b - batch, c - channels, t/h/w - time, height, width.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanResample, unpatchify


@dataclass
class BackboneConfig:
    base_dim: int = 16
    z_dim: int = 8
    dim_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 1
    temperal_downsample: list[bool] = field(default_factory=lambda: [False, True, True])
    attn_scales: list[float] = field(default_factory=list)
    # Wan 2.2's layout: residual down/up blocks whose shortcuts average / duplicate (AvgDown3D, DupUp3D),
    # and pixels folded patch_size x patch_size into channels before the first convolution
    is_residual: bool = False
    patch_size: int | None = None
    # indices into encoder.down_blocks whose outputs feed LaPQ; None = every spatial downsample
    tap_blocks: list[int] | None = None
    # normalise latents with Wan's latents_mean/std (on for pretrained Wan 2.1 weights)
    normalize_latents: bool = False
    # per-channel latent statistics; None: diffusers' defaults (Wan 2.1's). Set from a pretrained VAE
    # (a parent measured here has its own), so that a saved tokenizer keeps them
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = None

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1) * (self.patch_size or 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temperal_downsample)

    def latent_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent (t, h, w) for a video; raises ValueError for sizes the backbone cannot take."""
        tf, sf = self.temporal_factor, self.spatial_factor
        if num_frames < 1 or (num_frames - 1) % tf:
            raise ValueError(f"num_frames must be 1 + {tf}k (1, {1 + tf}, {1 + 2 * tf}, ...), got {num_frames}")
        if height % sf or width % sf or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {sf}, got {height}x{width}")
        return (1 + (num_frames - 1) // tf, height // sf, width // sf)

    def wan_kwargs(self) -> dict:
        stats = {k: list(v) for k, v in (("latents_mean", self.latents_mean), ("latents_std", self.latents_std))
                 if v is not None}
        return dict(
            base_dim=self.base_dim,
            z_dim=self.z_dim,
            dim_mult=list(self.dim_mult),
            num_res_blocks=self.num_res_blocks,
            temperal_downsample=list(self.temperal_downsample),
            attn_scales=list(self.attn_scales),
            is_residual=self.is_residual,
            patch_size=self.patch_size,
            in_channels=3 * (self.patch_size or 1) ** 2,
            out_channels=3 * (self.patch_size or 1) ** 2,
            scale_factor_spatial=self.spatial_factor,
            scale_factor_temporal=self.temporal_factor,
            **stats,
        )

    @classmethod
    def of(cls, vae: AutoencoderKLWan) -> "BackboneConfig":
        """The geometry of a built or loaded AutoencoderKLWan."""
        c = vae.config
        return cls(base_dim=c.base_dim, z_dim=c.z_dim, dim_mult=list(c.dim_mult), num_res_blocks=c.num_res_blocks,
                   temperal_downsample=list(c.temperal_downsample), attn_scales=list(c.attn_scales),
                   is_residual=c.is_residual, patch_size=c.patch_size)


def build_wan(config: BackboneConfig) -> AutoencoderKLWan:
    return AutoencoderKLWan(**config.wan_kwargs())


def default_tap_blocks(vae: AutoencoderKLWan) -> list[int]:
    """Indices of the encoder's spatial downsample blocks (strides 2, 4, 8 for Wan 2.1; for residual
    Wan 2.2-style encoders the down blocks that end in a downsampler)."""
    return [i for i, m in enumerate(vae.encoder.down_blocks)
            if isinstance(m, WanResample) or getattr(m, "downsampler", None) is not None]


def tap_channels(vae: AutoencoderKLWan, tap_blocks: list[int]) -> list[int]:
    """Channels of each tapped block's output, read from its last conv."""
    channels = []
    for i in tap_blocks:
        convs = [m for m in vae.encoder.down_blocks[i].modules() if isinstance(m, torch.nn.Conv3d | torch.nn.Conv2d)]
        if not convs:
            raise ValueError(f"encoder.down_blocks[{i}] has no convolution to read its width from")
        channels.append(convs[-1].out_channels)
    return channels


@contextmanager
def capture_taps(vae: AutoencoderKLWan, tap_blocks: list[int]):
    """Collect the outputs of `encoder.down_blocks[i]` while encoding; yields a list filled on exit.

    The yielded list holds one (b, c_i, t_i, h_i, w_i) tensor per tap, chunks joined along time.
    """
    chunks: list[list[torch.Tensor]] = [[] for _ in tap_blocks]
    taps: list[torch.Tensor] = []
    handles = [
        vae.encoder.down_blocks[i].register_forward_hook(lambda _m, _in, out, j=j: chunks[j].append(out))
        for j, i in enumerate(tap_blocks)
    ]
    try:
        yield taps
    finally:
        for h in handles:
            h.remove()
    taps.extend(torch.cat(c, dim=2) for c in chunks)


def latent_stats(vae: AutoencoderKLWan, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan's per-channel latents_mean / latents_std as (1, c, 1, 1, 1)."""
    mean = torch.tensor(vae.config.latents_mean, device=device, dtype=dtype)
    std = torch.tensor(vae.config.latents_std, device=device, dtype=dtype)
    if mean.numel() != vae.config.z_dim:
        raise ValueError(
            f"normalize_latents needs {vae.config.z_dim} latents_mean values, the backbone has {mean.numel()}"
        )
    return mean.view(1, -1, 1, 1, 1), std.view(1, -1, 1, 1, 1)


def decode_unclamped(vae: AutoencoderKLWan, z: torch.Tensor) -> torch.Tensor:
    """Wan decoding (b, c, t, h, w) -> (b, 3, T, H, W) without the final clamp to [-1, 1].

    Training decodes this way: a clamp has zero gradient outside [-1, 1], so a decoder that
    drifts below -1 on mostly black frames (Shapes) would never come back.
    """
    cache = [None] * sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
    x = vae.post_quant_conv(z)
    frames = [
        vae.decoder(x[:, :, i : i + 1], feat_cache=cache, feat_idx=[0], first_chunk=i == 0)
        for i in range(x.shape[2])
    ]
    out = torch.cat(frames, dim=2)  # (b, 3 * p * p, T, H / p, W / p)
    return unpatchify(out, vae.config.patch_size) if vae.config.patch_size else out
