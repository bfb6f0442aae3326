"""Fit LaPQ alone to a frozen backbone's latents: the fast first stage of a tokenizer on a pretrained VAE.

With the encoder frozen, the latents and taps of a set of clips are fixed: they are computed once,
and the quantizer learns to reproduce them (latent error + commitment + entropy, no decoder in the
loop) at ~1/20 of an end-to-end step's cost. `pyratok.train` runs this before its own loop when
`train.quantizer_fit_steps > 0`; the end-to-end steps that follow add the decoder's reconstruction
loss, the text and the AR objective. `bench/ablate_quantizer.py` uses the same two functions.
Letters: n - clips, c - latent channels, t/h/w - latent grid.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .lapq import LaPQ
from .objective import LossWeights, quantizer_loss
from .tokenizer import PyraTokTokenizer


@torch.no_grad()
def encode_clips(tokenizer: PyraTokTokenizer, dataset, num_clips: int, batch_size: int = 8):
    """(latents (n, c, t, h, w), taps [(n, c_i, t_i, h_i, w_i)], videos (n, 3, T, H, W)) of the first clips."""
    if num_clips < 1 or num_clips > len(dataset):
        raise ValueError(f"num_clips must be in [1, {len(dataset)}], got {num_clips}")
    zs, taps, videos = [], [], []
    for start in tqdm(range(0, num_clips, batch_size), desc="encode clips", leave=False):
        video = torch.stack([dataset[i]["video"] for i in range(start, min(start + batch_size, num_clips))])
        z, _, tap = tokenizer.encode_latent(video.to(tokenizer.device, tokenizer.dtype))
        zs.append(z)
        taps.append(tap)
        videos.append(video)
    return torch.cat(zs), [torch.cat(depth) for depth in zip(*taps)], torch.cat(videos)


def fit_quantizer(
    quantizer: LaPQ, z: torch.Tensor, taps: list[torch.Tensor], steps: int, lr: float = 2e-3,
    batch_size: int = 16, seed: int = 0, weights: LossWeights | None = None,
) -> LaPQ:
    """Train `quantizer` in place on (z, taps) for `steps` AdamW steps: flat lr, then linear to 0 over the last half."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    weights = weights or LossWeights()
    quantizer.train()
    params = [p for p in quantizer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, 2 * (1 - s / steps)))
    g = torch.Generator().manual_seed(seed)
    progress = tqdm(range(steps), desc=f"fit LaPQ ({quantizer.config.num_bits} bits)")
    for _ in progress:
        idx = torch.randint(0, z.shape[0], (batch_size,), generator=g)
        loss = quantizer_loss(quantizer(z[idx], [t[idx] for t in taps]), weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return quantizer.eval()
