"""The latent refiner: a drawn pyramid's z_hat, and the caption, to the z_hat of a clip like it.

The generator draws each finest token's bits on its own, so a token it is unsure of decodes to speckle and
ragged edges (README "Generator"). The refiner is a small 3D CNN with text cross-attention in every block
that reads the summed z_hat of a drawn pyramid and the prompt's text states and returns a corrected z_hat
for the vae to decode. It is trained (`generator.train_refiner`) on the generator's own draws: each cached
clip keeps its first `keep_levels` levels, the frozen generator draws the rest from the clip's caption, and
the refiner learns to give back the clip's own z_hat (mean squared error). Its last convolution starts at
zero, so an untrained refiner returns its input.
Letters: b - batch, c - latent channels, d - width, t/h/w - latent grid, s - text tokens, e - text width.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from einops import rearrange

from pyratok.pyramid import TokenPyramid
from pyratok.text_attention import TextCrossAttention

GROUPS = 8  # GroupNorm groups: the width must be a multiple


class LatentRefiner(ModelMixin, ConfigMixin):
    """z_hat (b, c, t, h, w) + text (b, s, e) -> refined z_hat (b, c, t, h, w); diffusers save / load."""

    @register_to_config
    def __init__(self, latent_channels: int = 16, width: int = 64, depth: int = 4, text_dim: int = 384,
                 text_heads: int = 4, keep_levels: int = 3):
        super().__init__()
        if width % GROUPS or width % text_heads:
            raise ValueError(f"width={width} must be a multiple of {GROUPS} and of text_heads={text_heads}")
        if latent_channels < 1 or depth < 1 or keep_levels < 0:
            raise ValueError(f"latent_channels and depth must be >= 1 and keep_levels >= 0, got "
                             f"{latent_channels}, {depth}, {keep_levels}")
        self.stem = nn.Conv3d(latent_channels, width, 3, padding=1)
        self.convs = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(GROUPS, width), nn.SiLU(), nn.Conv3d(width, width, 3, padding=1))
            for _ in range(depth))
        self.text = nn.ModuleList(TextCrossAttention(width, text_dim, text_heads, gate_init=1.0) for _ in range(depth))
        self.out = nn.Sequential(nn.GroupNorm(GROUPS, width), nn.SiLU(), nn.Conv3d(width, latent_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # starts as the identity
        nn.init.zeros_(self.out[-1].bias)

    def check_inputs(self, z_hat: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor | None) -> None:
        """ValueError naming the first input whose shape does not fit this refiner."""
        c, e = self.config.latent_channels, self.config.text_dim
        if z_hat.dim() != 5 or z_hat.shape[1] != c:
            raise ValueError(f"z_hat must be (b, {c}, t, h, w), got {tuple(z_hat.shape)}")
        if text_states.dim() != 3 or text_states.shape[0] != z_hat.shape[0] or text_states.shape[-1] != e:
            raise ValueError(f"text_states must be ({z_hat.shape[0]}, s, {e}), got {tuple(text_states.shape)}")
        if text_mask is not None and tuple(text_mask.shape) != tuple(text_states.shape[:2]):
            raise ValueError(f"text_mask must be {tuple(text_states.shape[:2])}, got {tuple(text_mask.shape)}")

    def forward(self, z_hat: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor | None = None):
        self.check_inputs(z_hat, text_states, text_mask)
        dtype = self.stem.weight.dtype
        h_bdthw = self.stem(z_hat.to(dtype))
        t, h, w = h_bdthw.shape[2:]
        for conv, text in zip(self.convs, self.text):
            h_bdthw = h_bdthw + conv(h_bdthw)
            tokens_bnd = rearrange(h_bdthw, "b d t h w -> b (t h w) d")
            tokens_bnd = text(tokens_bnd, text_states.to(dtype), text_mask)
            h_bdthw = rearrange(tokens_bnd, "b (t h w) d -> b d t h w", t=t, h=h, w=w)
        return z_hat + self.out(h_bdthw).to(z_hat.dtype)


def refiner_loss(refiner: LatentRefiner, generator, quantizer, batch: dict, rng: torch.Generator,
                 guidance_scale: float = 3.0) -> tuple[torch.Tensor, dict]:
    """Mean squared error between the refined z_hat of the generator's draw and the clip's own z_hat.

    batch: a token-cache batch (`TokenCacheDataset.collate`: "bits" per level, "text_states", "text_mask",
    "latent_grid"). The frozen generator keeps each clip's first `refiner.config.keep_levels` levels and draws
    the rest from the caption (guidance as the pipeline samples), with one seed per clip taken from `rng`.
    Logs: loss, and the error of the drawn z_hat itself ("drawn_mse", what an identity refiner scores)."""
    bits, keep = batch["bits"], refiner.config.keep_levels
    if not 0 <= keep < len(bits):
        raise ValueError(f"keep_levels={keep} must leave a level to draw: the cache has {len(bits)} levels")
    states, mask = batch["text_states"], batch["text_mask"]
    if states is None:
        raise ValueError("the refiner learns from captions: the token cache has no text states")
    seeds = torch.randint(0, 2**62, (bits[0].shape[0],), generator=rng).tolist()
    with torch.no_grad():
        target = quantizer.reconstruct(bits, batch["latent_grid"])  # (b, c, t, h, w) the clip's z_hat
        drawn: TokenPyramid = generator.generate(
            quantizer, states, mask, batch["latent_grid"], guidance_scale=guidance_scale, prefix_bits=bits[:keep],
            generator=[torch.Generator().manual_seed(s) for s in seeds])
    refined = refiner(drawn.latent, states, mask)
    loss = F.mse_loss(refined, target)
    return loss, {"loss": loss.detach(), "drawn_mse": F.mse_loss(drawn.latent, target).detach()}
