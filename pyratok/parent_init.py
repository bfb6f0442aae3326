"""Start the parent VAE as the blur it must beat: an AutoencoderKLWan (Wan 2.1 layout, patch_size 2)
whose initial weights make it a box-blur codec at its own compression.

Every residual branch and the attention projections start at zero, so the network is its skip path:
patchify, box averaging by the strided downsample convs (2x2 in space per stage, frame pairs in time),
nearest upsampling in the decoder, unpatchify. The heads (RMS norm over channels, SiLU, conv) are made
exactly linear: each signal channel travels beside its negative, SiLU(u) - SiLU(-u) = u, and a large
constant channel makes the RMS norm a near-constant scale. Training then only has to add detail: from a
random start the tiny Wan stays below the blur for thousands of CPU steps (bench/parent_layouts.py).
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanAttentionBlock, WanResample, WanResidualBlock

K = 1000.0  # the constant channel's value: the RMS norm divides by ~K, error ~ |s|^2 / (2 K^2)


def _eye_(conv, n):
    """A 1x1x1 conv as the identity on its first n channels."""
    with torch.no_grad():
        conv.weight.zero_(), conv.bias.zero_()
        for c in range(n):
            conv.weight[c, c, 0, 0, 0] = 1.0


def blur_init_(vae: AutoencoderKLWan) -> None:
    """Set `vae`'s weights in place so that it encodes and decodes as a box blur at its compression."""
    cfg = vae.config
    if cfg.is_residual or cfg.patch_size != 2:
        raise ValueError(f"blur init needs Wan 2.1's layout with patch_size 2, got is_residual={cfg.is_residual}, "
                         f"patch_size={cfg.patch_size}")
    n = 3 * 4  # signal channels: the 2x2 patch's 12 values
    narrowest = min(cfg.base_dim * m for m in [1, *cfg.dim_mult])
    if narrowest < 2 * n + 1 or cfg.z_dim < n:
        raise ValueError(f"blur init needs every width >= {2 * n + 1} (each signal and its negative, plus a constant) "
                         f"and z_dim >= {n}; got base_dim={cfg.base_dim}, dim_mult={list(cfg.dim_mult)}, "
                         f"z_dim={cfg.z_dim}")
    for m in vae.modules():
        if isinstance(m, WanResidualBlock):
            torch.nn.init.zeros_(m.conv2.weight), torch.nn.init.zeros_(m.conv2.bias)
            if not isinstance(m.conv_shortcut, torch.nn.Identity):
                _eye_(m.conv_shortcut, min(m.in_dim, m.out_dim))
        if isinstance(m, WanAttentionBlock):
            torch.nn.init.zeros_(m.proj.weight), torch.nn.init.zeros_(m.proj.bias)
        if isinstance(m, WanResample):
            conv = m.resample[1]
            dim = conv.in_channels
            with torch.no_grad():
                conv.weight.zero_(), conv.bias.zero_()
                if m.mode.startswith("downsample"):  # zero-pad right/bottom, 3x3 stride 2: taps 0..1 = the 2x2 cell
                    for c in range(dim):
                        conv.weight[c, c, 0:2, 0:2] = 0.25
                else:  # nearest x2 then 3x3: the centre tap copies
                    for c in range(min(dim, conv.out_channels)):
                        conv.weight[c, c, 1, 1] = 1.0
                if m.mode == "downsample3d":  # stride-2 causal time conv over [prev, a, b]: mean of a, b
                    m.time_conv.weight.zero_(), m.time_conv.bias.zero_()
                    for c in range(dim):
                        m.time_conv.weight[c, c, 1:3, 0, 0] = 0.5
                if m.mode == "upsample3d":  # two output frames per frame, both copies
                    m.time_conv.weight.zero_(), m.time_conv.bias.zero_()
                    for c in range(dim):
                        m.time_conv.weight[c, c, 2, 0, 0] = 1.0
                        m.time_conv.weight[dim + c, c, 2, 0, 0] = 1.0
    for coder, last in ((vae.encoder, vae.encoder.mid_block.resnets[-1]),
                        (vae.decoder, vae.decoder.up_blocks[-1].resnets[-1])):
        conv_in = coder.conv_in
        with torch.no_grad():  # conv_in: +x into channels 0..n-1, -x into n..2n-1
            conv_in.weight.zero_(), conv_in.bias.zero_()
            t = conv_in.weight.shape[2] - 1
            for c in range(n):
                conv_in.weight[c, c, t, 1, 1] = 1.0
                conv_in.weight[n + c, c, t, 1, 1] = -1.0
            head = coder.norm_out
            last.conv2.bias[-1] = K  # the constant channel, the block's last
            dim = head.gamma.shape[0]
            head.gamma.zero_()
            head.gamma[: 2 * n] = K / dim**0.5  # normalised channel ~ x / K * sqrt(dim) * gamma = x
            conv_out = coder.conv_out
            conv_out.weight.zero_(), conv_out.bias.zero_()
            t = conv_out.weight.shape[2] - 1
            for c in range(n):  # SiLU(x) - SiLU(-x) = x
                conv_out.weight[c, c, t, 1, 1] = 1.0
                conv_out.weight[c, n + c, t, 1, 1] = -1.0
    for conv in (vae.quant_conv, vae.post_quant_conv):
        _eye_(conv, conv.out_channels)
