"""`PyraTokGenerator`: the text-to-video next-scale transformer as a diffusers model.

PyraTok's generation stage: a VAR/Infinity-style transformer over LaPQ token pyramids with a
learned null text (classifier-free guidance, text dropout in training); safetensors save/load.
Letters: b - batch, s - text length, d - text width.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from pyratok.nextscale import KVCache, NextScaleConfig, NextScaleTransformer

from .config import GeneratorConfig
from .sampling import generate


class PyraTokGenerator(ModelMixin, ConfigMixin):
    """Wraps a `NextScaleTransformer`; `generate(...)` samples a `TokenPyramid` level by level."""

    config_name = "config.json"
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 8,
        num_bits: int = 16,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        text_dim: int = 384,
        num_levels: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        text_mode: str = "cross",
        max_text_len: int = 77,
        gradient_checkpointing: bool = False,
        attn_backend: str = "sdpa",
        num_null_tokens: int = 1,
    ):
        super().__init__()
        names = {f.name for f in dataclasses.fields(NextScaleConfig)}
        values = dict(locals())
        self.transformer = NextScaleTransformer(NextScaleConfig(**{k: values[k] for k in names}))
        if num_null_tokens < 1:
            raise ValueError(f"num_null_tokens must be >= 1, got {num_null_tokens}")
        self.null_text = nn.Parameter(torch.randn(num_null_tokens, text_dim) * 0.02)  # (n_null, d)
        self.gradient_checkpointing = gradient_checkpointing

    @classmethod
    def from_generator_config(cls, config: GeneratorConfig) -> "PyraTokGenerator":
        return cls(**dataclasses.asdict(config))

    def enable_gradient_checkpointing(self, gradient_checkpointing_func=None) -> None:
        super().enable_gradient_checkpointing(gradient_checkpointing_func)
        self.transformer.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        super().disable_gradient_checkpointing()
        self.transformer.gradient_checkpointing = False

    # --- text: real, null, dropped -------------------------------------------------------------
    def null_text_like(self, batch: int, seq_len: int = 1, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Null text padded to max(seq_len, num_null_tokens): states (b, s, d), mask (b, s) bool."""
        n_null, d = self.null_text.shape
        s = max(seq_len, n_null)
        device = device if device is not None else self.null_text.device
        states = torch.cat([self.null_text, self.null_text.new_zeros(s - n_null, d)]).to(device)
        mask = (torch.arange(s, device=device) < n_null)[None].expand(batch, s)
        return states[None].expand(batch, s, d), mask

    def apply_text_dropout(self, text_states, text_mask, drop: torch.Tensor):
        """Replace the text of samples where drop (b,) is True by the null text.

        The null text always enters the graph (gradient zero where unused), so DDP / ZeRO see
        every parameter used at every step. text_states None means "no captions": all null.
        """
        b = drop.shape[0]
        if text_states is None:
            states, mask = self.null_text_like(b, 1, drop.device)
            return states, mask
        if text_mask is None:
            text_mask = torch.ones(text_states.shape[:2], dtype=torch.bool, device=text_states.device)
        s = max(text_states.shape[1], self.null_text.shape[0])
        pad = s - text_states.shape[1]
        if pad:  # (b, s0, d) -> (b, s, d)
            text_states = torch.cat([text_states, text_states.new_zeros(b, pad, text_states.shape[-1])], dim=1)
            text_mask = torch.cat([text_mask.bool(), text_mask.new_zeros(b, pad, dtype=torch.bool)], dim=1)
        null_states, null_mask = self.null_text_like(b, s, text_states.device)
        drop = drop.to(text_states.device)
        states = torch.where(drop[:, None, None], null_states.to(text_states.dtype), text_states)
        mask = torch.where(drop[:, None], null_mask, text_mask.bool())
        return states, mask

    # --- model calls ------------------------------------------------------------------------------
    def forward(self, level_inputs, text_states=None, text_mask=None, drop_text: torch.Tensor | None = None):
        """Teacher-forced logits per level (b, t_l, h_l, w_l, k); drop_text (b,) bool -> null text."""
        if drop_text is not None or text_states is None:
            if drop_text is None:
                drop_text = torch.ones(level_inputs[0].shape[0], dtype=torch.bool, device=level_inputs[0].device)
            text_states, text_mask = self.apply_text_dropout(text_states, text_mask, drop_text)
        return self.transformer(level_inputs, text_states, text_mask)

    def new_cache(self, batch: int | None = None) -> KVCache:
        return self.transformer.new_cache(batch)

    def forward_level(self, level, level_input, text_states, text_mask, cache: KVCache):
        return self.transformer.forward_level(level, level_input, text_states, text_mask, cache)

    def generate(self, quantizer, prompt_embeds, prompt_mask, latent_grid, **kwargs):
        """Sample a `TokenPyramid`; see `generator.sampling.generate` for the arguments."""
        return generate(self, quantizer, prompt_embeds, prompt_mask, latent_grid, **kwargs)
