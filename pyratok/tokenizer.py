"""`PyraTokTokenizer`: video <-> token pyramid, a diffusers model on a Wan 2.1 VAE backbone.

Implements the PyraTok tokenizer (§3): backbone encoder with taps, LaPQ with text guidance,
the alignment head, the next-scale prior of the global AR objective, and (tiled) decoding.
Letters: b - batch, c - channels, t/h/w - latent grid, T/H/W - video size, s - text length.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from .alignment import AlignmentConfig, AlignmentHead
from .backbone import (
    BackboneConfig,
    build_wan,
    capture_taps,
    decode_unclamped,
    default_tap_blocks,
    latent_stats,
    tap_channels,
)
from .config import config_from_dict, config_to_dict
from .lapq import LaPQ, LaPQConfig, LaPQOutput
from .nextscale import NextScaleConfig, NextScaleTransformer
from .null_text import drop_text, full_mask, null_text_like
from .pyramid import TokenPyramid
from .tiling import TilingConfig, tiled_decode


@dataclass
class TokenizerConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    quantizer: LaPQConfig = field(default_factory=LaPQConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    prior: NextScaleConfig | None = field(default_factory=lambda: NextScaleConfig(width=64, depth=2, heads=4))
    text_dim: int = 384


@dataclass
class TokenizerOutput:
    recon: torch.Tensor  # (b, 3, T, H, W)
    z: torch.Tensor  # (b, c, t, h, w) encoder latent (normalised when configured)
    logvar: torch.Tensor
    quant: LaPQOutput | None  # None in the continuous-VAE stage
    text_states: torch.Tensor
    text_mask: torch.Tensor
    taps: list[torch.Tensor]


class PyraTokTokenizer(ModelMixin, ConfigMixin):
    """Language-aligned pyramidal video tokenizer.

    video (b, 3, T, H, W) in [-1, 1], T = 1 + 4k, H and W multiples of the spatial factor
    -> `encode` -> TokenPyramid -> `decode` -> video.
    """

    @register_to_config
    def __init__(
        self,
        backbone_config: dict | None = None,
        quantizer_config: dict | None = None,
        alignment_config: dict | None = None,
        prior_config: dict | None = None,
        text_dim: int = 384,
    ):
        super().__init__()
        cfg = config_from_dict(
            TokenizerConfig,
            {"backbone": backbone_config or {}, "quantizer": quantizer_config or {},
             "alignment": alignment_config or {}, "prior": prior_config, "text_dim": text_dim},
        )
        if prior_config is None:  # keep the dataclass default when the caller gives none
            cfg.prior = TokenizerConfig().prior
        self.cfg = cfg
        self.backbone = build_wan(cfg.backbone)
        self.tap_blocks = cfg.backbone.tap_blocks or default_tap_blocks(self.backbone)
        cfg.quantizer.tap_channels = tap_channels(self.backbone, self.tap_blocks)
        cfg.quantizer.latent_channels = cfg.backbone.z_dim
        cfg.quantizer.text_dim = text_dim
        self.quantizer = LaPQ(cfg.quantizer)
        self.alignment = AlignmentHead(cfg.alignment, cfg.quantizer.num_bits, cfg.quantizer.num_levels, text_dim)
        self.null_text = nn.Parameter(torch.randn(1, 1, text_dim) * 0.02)
        self.prior = None
        if cfg.prior is not None and cfg.prior.depth > 0:
            cfg.prior.latent_channels = cfg.backbone.z_dim
            cfg.prior.num_bits = cfg.quantizer.num_bits
            cfg.prior.num_levels = cfg.quantizer.num_levels
            cfg.prior.text_dim = text_dim
            self.prior = NextScaleTransformer(cfg.prior)
        self.tiling: TilingConfig | None = None

    @classmethod
    def from_config_dataclass(cls, cfg: TokenizerConfig) -> "PyraTokTokenizer":
        d = config_to_dict(cfg)
        return cls(**{f"{k}_config" if k != "text_dim" else k: v for k, v in d.items()})

    # --- geometry -------------------------------------------------------------------------
    @property
    def spatial_factor(self) -> int:
        return self.cfg.backbone.spatial_factor

    @property
    def temporal_factor(self) -> int:
        return self.cfg.backbone.temporal_factor

    def latent_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent (t, h, w) for a video; raises ValueError for sizes the backbone cannot take."""
        return self.cfg.backbone.latent_grid(num_frames, height, width)

    def token_grids(self, num_frames: int, height: int, width: int) -> list[tuple[int, int, int]]:
        return self.quantizer.grids_for(self.latent_grid(num_frames, height, width))

    def _check_video(self, video: torch.Tensor) -> None:
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be (batch, 3, frames, height, width), got {tuple(video.shape)}")
        self.latent_grid(*video.shape[2:])

    # --- text -----------------------------------------------------------------------------
    def text_inputs(self, batch: int, prompt_embeds=None, prompt_mask=None, drop: torch.Tensor | None = None):
        """Text states (b, s, d) and mask (b, s); rows without text (None or `drop`) get the null text."""
        null = self.null_text[0].to(self.dtype)  # (1, d)
        if prompt_embeds is None:
            return null_text_like(null, batch, 1)
        if prompt_embeds.shape[0] != batch or prompt_embeds.shape[-1] != self.cfg.text_dim:
            raise ValueError(
                f"prompt_embeds must be ({batch}, seq, {self.cfg.text_dim}), got {tuple(prompt_embeds.shape)}"
            )
        states = prompt_embeds.to(null.dtype)
        mask = full_mask(states, prompt_mask)
        if drop is not None:  # a dropped caption becomes one null token at position 0, the rest masked out
            states, mask = drop_text(null, states, mask, drop)
        return states, mask

    # --- encoder side ---------------------------------------------------------------------
    def encode_latent(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """video -> (mean (b, c, t, h, w), logvar, taps); the encoder is never tiled (taps need it whole)."""
        self._check_video(video)
        with capture_taps(self.backbone, self.tap_blocks) as taps:
            dist = self.backbone.encode(video.to(self.dtype)).latent_dist
        mean, logvar = dist.mean, dist.logvar
        if self.cfg.backbone.normalize_latents:
            mu, std = latent_stats(self.backbone, mean.device, mean.dtype)
            mean, logvar = (mean - mu) / std, logvar - 2 * torch.log(std)
        return mean, logvar, taps

    @torch.no_grad()
    def encode(self, video: torch.Tensor, prompt_embeds=None, prompt_mask=None, return_latent: bool = False):
        """video (b, 3, T, H, W) in [-1, 1] -> TokenPyramid (bits per level and z_hat); with `return_latent`,
        (pyramid, z): z (b, c, t, h, w) the unquantized latent (the encoder's mean) the pyramid quantizes."""
        z, _, taps = self.encode_latent(video)
        states, mask = self.text_inputs(z.shape[0], prompt_embeds, prompt_mask)
        pyramid = self.quantizer(z, taps, states, mask).pyramid
        return (pyramid, z) if return_latent else pyramid

    # --- decoder side ---------------------------------------------------------------------
    def enable_tiling(
        self,
        tile_sample_min_height: int | None = None,
        tile_sample_min_width: int | None = None,
        tile_sample_stride_height: int | None = None,
        tile_sample_stride_width: int | None = None,
        temporal_chunk: int | None = None,
    ) -> None:
        """Decode in overlapping spatial tiles (pixel units, diffusers' names) with bounded memory."""
        given = dict(
            tile_sample_min_height=tile_sample_min_height,
            tile_sample_min_width=tile_sample_min_width,
            tile_sample_stride_height=tile_sample_stride_height,
            tile_sample_stride_width=tile_sample_stride_width,
            temporal_chunk=temporal_chunk,
        )
        self.tiling = TilingConfig(**{k: v for k, v in given.items() if v is not None})

    def disable_tiling(self) -> None:
        self.tiling = None

    def decode_latent(self, z_hat: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """(b, c, t, h, w) latent (normalised space) -> video (b, 3, T, H, W) in [-1, 1].

        `clamp=False` (training) skips the final clamp so that out-of-range pixels keep a gradient.
        """
        if self.cfg.backbone.normalize_latents:
            mu, std = latent_stats(self.backbone, z_hat.device, z_hat.dtype)
            z_hat = z_hat * std + mu
        z_hat = z_hat.to(self.dtype)
        if not clamp:
            return decode_unclamped(self.backbone, z_hat)
        if self.tiling is not None:
            return tiled_decode(self.backbone, z_hat, self.tiling)
        return self.backbone.decode(z_hat).sample

    def decode(self, pyramid_or_latent: TokenPyramid | torch.Tensor) -> torch.Tensor:
        if isinstance(pyramid_or_latent, TokenPyramid):
            z_hat = self.quantizer.decode_pyramid(pyramid_or_latent.to(self.device))
        else:
            z_hat = pyramid_or_latent
        return self.decode_latent(z_hat)

    # --- alignment ------------------------------------------------------------------------
    def token_text_similarity(self, pyramid: TokenPyramid, text_pooled: torch.Tensor) -> list[torch.Tensor]:
        """Per level (b, m, t_l, h_l, w_l) cosine similarity of each token with each of m pooled texts."""
        text_emb = self.alignment.text_embedding(text_pooled.to(self.dtype))
        return self.alignment.similarity_maps([b.to(self.dtype) for b in pyramid.bits], text_emb)

    def video_text_similarity(self, pyramid: TokenPyramid, text_pooled: torch.Tensor) -> torch.Tensor:
        """(b, m) cosine similarity of each video's pooled tokens with each pooled text."""
        video = self.alignment.video_embedding([b.to(self.dtype) for b in pyramid.bits])
        return video @ self.alignment.text_embedding(text_pooled.to(self.dtype)).t()

    # --- training forward -----------------------------------------------------------------
    def forward(
        self,
        video: torch.Tensor,
        prompt_embeds: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
        quantize: bool = True,
        generator: torch.Generator | None = None,
        sample_posterior: bool = True,
        flip_finest: torch.Tensor | None = None,
    ) -> TokenizerOutput:
        """Encode, quantize and decode. `quantize=False` is the continuous stage: it decodes a
        posterior sample, or the posterior mean with `sample_posterior=False` (a plain autoencoder
        warm-up: at init the sampling noise swamps the small mean and the decoder learns to ignore it).
        `flip_finest` (b, t, h, w, k) bool: decode with these finest-level bits flipped, as a generator that
        draws the finest level imperfectly would give them (the decoder-only stage's robustness training;
        the decoded latent is then the flipped tokens' z_hat, without gradients into LaPQ)."""
        mean, logvar, taps = self.encode_latent(video)
        states, mask = self.text_inputs(mean.shape[0], prompt_embeds, prompt_mask, drop_text)
        if flip_finest is not None and not quantize:
            raise ValueError("flip_finest needs quantize=True: the continuous stage has no bits to flip")
        if quantize:
            quant = self.quantizer(mean, taps, states, mask)
            z_hat = quant.latent
            if flip_finest is not None:
                bits = list(quant.pyramid.bits)
                if flip_finest.shape != bits[-1].shape:
                    raise ValueError(f"flip_finest must be the finest level's shape {tuple(bits[-1].shape)}, "
                                     f"got {tuple(flip_finest.shape)}")
                bits[-1] = torch.where(flip_finest, -bits[-1], bits[-1])
                z_hat = self.quantizer.reconstruct(bits, quant.pyramid.latent_grid)
        else:
            quant = None
            z_hat = mean
            if sample_posterior:
                noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                z_hat = mean + (0.5 * logvar).exp() * noise
        recon = self.decode_latent(z_hat, clamp=False)
        return TokenizerOutput(recon, mean, logvar, quant, states, mask, taps)
