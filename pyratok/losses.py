"""Reconstruction losses of the tokenizer: L1 and SSIM over video frames, and the VAE KL.

Implements the reconstruction terms of PyraTok's tokenizer objective (§3.4); SSIM uses an
11-tap Gaussian window per frame. Letters: b - batch, c - channels, t - frames, h/w - size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, window: int = 11) -> torch.Tensor:
    """Mean SSIM of videos (b, c, t, h, w) in [-1, 1] (data_range 2), frame by frame.

    Always computed in float32, also under autocast: in bf16 the variances (E[x^2] - E[x]^2) cancel to
    zero or below and the ratio becomes inf.
    """
    with torch.autocast(x.device.type, enabled=False):
        return _ssim(x.float(), y.float(), data_range, window)


def _ssim(x: torch.Tensor, y: torch.Tensor, data_range: float, window: int) -> torch.Tensor:
    x2 = rearrange(x.float(), "b c t h w -> (b t) c h w")
    y2 = rearrange(y.float(), "b c t h w -> (b t) c h w")
    size = min(window, x2.shape[-1], x2.shape[-2])
    size -= 1 - size % 2  # odd
    g = _gaussian_window(size, 1.5 * size / 11, x2.device, x2.dtype)
    c = x2.shape[1]
    kx = g.view(1, 1, 1, -1).expand(c, 1, 1, size)
    ky = g.view(1, 1, -1, 1).expand(c, 1, size, 1)

    def blur(img):
        return F.conv2d(F.conv2d(img, kx, groups=c), ky, groups=c)

    mu_x, mu_y = blur(x2), blur(y2)
    var_x = blur(x2 * x2) - mu_x**2
    var_y = blur(y2 * y2) - mu_y**2
    cov = blur(x2 * y2) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean()


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """PSNR in dB between tensors in [-1, 1] (data_range 2), over the whole batch."""
    mse = (x.float() - y.float()).pow(2).mean().clamp_min(1e-12)
    return 10 * torch.log10(data_range**2 / mse)


def ssim01(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of videos in [-1, 1] mapped to [0, 1] frames (data_range 1), as published tokenizers report it."""
    return ssim((x + 1) / 2, (y + 1) / 2, data_range=1.0)


def blur_reference(video: torch.Tensor, latent_grid: tuple[int, int, int]) -> torch.Tensor:
    """The baseline at a tokenizer's compression: (b, c, T, H, W) average-pooled to the latent grid
    (t, h, w) (4x8x8 for Wan), then trilinear back up to (T, H, W)."""
    pooled = F.adaptive_avg_pool3d(video.float(), latent_grid)  # (b, c, t, h, w)
    return F.interpolate(pooled, size=video.shape[-3:], mode="trilinear", align_corners=False).to(video.dtype)


def latent_snr(z_hat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """10 log10(var(z) / mean((z_hat - z)^2)) in dB: how well a quantized latent approximates the encoder's."""
    return 10 * torch.log10(z.float().var() / (z_hat.float() - z.float()).pow(2).mean().clamp_min(1e-12))


def foreground_weights(target: torch.Tensor, weight: float, threshold: float = -0.6) -> torch.Tensor:
    """Per-pixel weights (b, 1, t, h, w): 1 + `weight` where any channel is brighter than `threshold`.

    Shapes clips are ~97% black; without this the objects hardly move an L1 averaged over pixels.
    The weights are normalised to mean 1 per clip, so a clip that is all foreground keeps plain L1.
    """
    fg = (target.amax(dim=1, keepdim=True) > threshold).to(target.dtype)  # (b, 1, t, h, w)
    w = 1.0 + weight * fg
    return w / w.mean(dim=(2, 3, 4), keepdim=True)


# Orthonormal opponent-colour axes of RGB: red-blue and green-magenta (the luminance axis is left out).
OPPONENT_CHROMA = torch.tensor([[1.0, 0.0, -1.0], [-1.0, 2.0, -1.0]]) / torch.tensor([[2.0**0.5], [6.0**0.5]])


def chroma(x: torch.Tensor) -> torch.Tensor:
    """(b, 3, t, h, w) RGB -> (b, 2, t, h, w) on the opponent chroma axes."""
    return torch.einsum("oc,bcthw->bothw", OPPONENT_CHROMA.to(x.device, x.dtype), x)


def reconstruction_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    ssim_weight: float = 0.2,
    mse_weight: float = 0.0,
    foreground_weight: float = 0.0,
    lowpass_weight: float = 0.0,
    chroma_weight: float = 0.0,
) -> dict:
    """L1 (optionally foreground-weighted) + `mse_weight` * MSE + `ssim_weight` * (1 - SSIM)
    + `lowpass_weight` * MSE of 4x4-pooled frames (each region's mean colour: hue learns late otherwise)
    + `chroma_weight` * L1 on the two opponent chroma axes, which weighs a green-magenta error as much as
    a red-blue one (natural video varies little along green-magenta, and a small tokenizer drops it)."""
    err = recon - target
    w = foreground_weights(target, foreground_weight) if foreground_weight > 0 else None
    l1 = err.abs().mean() if w is None else (err.abs() * w).mean()
    out = {"l1": l1, "loss": l1}
    if chroma_weight > 0:
        c = chroma(err).abs()  # (b, 2, t, h, w)
        out["chroma"] = c.mean() if w is None else (c * w).mean()
        out["loss"] = out["loss"] + chroma_weight * out["chroma"]
    if mse_weight > 0:
        mse = err.pow(2).mean() if w is None else (err.pow(2) * w).mean()
        out["mse"] = mse
        out["loss"] = out["loss"] + mse_weight * mse
    if lowpass_weight > 0:
        pooled = F.avg_pool3d(recon, (1, 4, 4)) - F.avg_pool3d(target, (1, 4, 4))  # (b, c, t, h/4, w/4)
        out["lowpass"] = pooled.pow(2).mean()
        out["loss"] = out["loss"] + lowpass_weight * out["lowpass"]
    if ssim_weight > 0:
        s = ssim(recon, target)
        out["ssim"] = s
        out["loss"] = out["loss"] + ssim_weight * (1 - s)
    return out


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), averaged per latent element."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
