"""`PyraTokGenerator`: the text-to-video next-scale transformer as a diffusers model.

PyraTok's generation stage: a VAR/Infinity-style transformer over LaPQ token pyramids with a
learned null text (classifier-free guidance, text dropout in training); safetensors save/load.
Letters: b - batch, s - text length, d - text width.
"""
from __future__ import annotations

import dataclasses
import inspect

import torch
import torch.nn as nn
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from pyratok.nextscale import KVCache, NextScaleConfig, NextScaleTransformer
from pyratok.null_text import drop_text as with_null_text  # `forward` has an argument named drop_text

from .config import GeneratorConfig
from .finest_conv import FinestConv
from .heads import GroupCodeHead, bits_to_codes
from .passes import input_channels, merge_passes
from .sampling import generate


def _config_signature(config_cls) -> inspect.Signature:
    """`(self, field=default, ...)` for a config dataclass: what diffusers records in config.json."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for f in dataclasses.fields(config_cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default))
    return inspect.Signature(params)


class PyraTokGenerator(ModelMixin, ConfigMixin):
    """Wraps a `NextScaleTransformer`; `generate(...)` samples a `TokenPyramid` level by level.

    The constructor takes exactly the fields of `GeneratorConfig` (keywords), which validates them.
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = True

    def _init(self, **config):
        super().__init__()
        cfg = GeneratorConfig(**config)
        names = {f.name for f in dataclasses.fields(NextScaleConfig)}
        conv = cfg.finest_head == "conv"  # the transformer then stops a level short of the finest
        steps = {"num_levels": cfg.num_levels + cfg.finest_passes - 1 - conv,  # one transformer step per pass
                 "latent_channels": input_channels(cfg.latent_channels, cfg.finest_passes)}
        self.transformer = NextScaleTransformer(NextScaleConfig(**{**{k: getattr(cfg, k) for k in names}, **steps}))
        self.finest_conv = FinestConv(cfg.latent_channels, cfg.text_dim, cfg.num_bits, cfg.finest_conv_width,
                                      cfg.finest_conv_blocks, cfg.width if cfg.finest_conv_features else 0,
                                      reads_given=cfg.finest_conv_passes > 1) if conv else None
        self.null_text = nn.Parameter(torch.randn(cfg.num_null_tokens, cfg.text_dim) * 0.02)  # (n_null, d)
        self.code_head = None
        if cfg.head != "bits":  # the transformer's last linear then gives each token's features, not bit logits
            self.transformer.head = nn.Linear(cfg.width, cfg.width)
            self.code_head = GroupCodeHead(cfg.width, cfg.num_bits, cfg.head_group_bits, cfg.head_hidden,
                                           sequential=cfg.head == "group_codes_sequential")
        self.gradient_checkpointing = cfg.gradient_checkpointing

    _init.__signature__ = _config_signature(GeneratorConfig)
    __init__ = register_to_config(_init)

    @classmethod
    def from_generator_config(cls, config: GeneratorConfig) -> "PyraTokGenerator":
        return cls(**dataclasses.asdict(config))

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(**{f.name: self.config[f.name] for f in dataclasses.fields(GeneratorConfig)})

    def enable_gradient_checkpointing(self, gradient_checkpointing_func=None) -> None:
        super().enable_gradient_checkpointing(gradient_checkpointing_func)
        self.transformer.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        super().disable_gradient_checkpointing()
        self.transformer.gradient_checkpointing = False

    # --- model calls ------------------------------------------------------------------------------
    def forward(self, level_inputs, text_states=None, text_mask=None, drop_text: torch.Tensor | None = None,
                target_bits=None, per_level: bool = True, finest_given=None, **kwargs):
        """Teacher-forced logits per level; drop_text (b,) bool -> null text. kwargs go to
        `NextScaleTransformer.forward` (e.g. layout). level_inputs: one per step (generator.passes: the
        levels', then the finest level's later passes); per_level=False returns the steps' outputs unmerged.
        finest_given: (bits, flags) (b, t, h, w, k) each, the finest bits a FinestConv drawing in passes is given.

        head "bits": bit logits (b, t_l, h_l, w_l, k). A group-code head: with target_bits (the levels'
        true bits) code logits (b, t_l, h_l, w_l, g, v), else the features (b, t_l, h_l, w_l, d) that
        `generator.sampling` draws codes from."""
        if drop_text is not None or text_states is None:
            if drop_text is None:
                drop_text = torch.ones(level_inputs[0].shape[0], dtype=torch.bool, device=level_inputs[0].device)
            text_states, text_mask = with_null_text(self.null_text, text_states, text_mask, drop_text)
        finest = None
        if self.finest_conv is not None and len(level_inputs) == self.config.num_levels:
            *level_inputs, finest = level_inputs
        features = None
        if finest is not None and self.config.finest_conv_features:
            out, features = self.transformer(level_inputs, text_states, text_mask, return_features=True, **kwargs)
        else:
            out = self.transformer(level_inputs, text_states, text_mask, **kwargs)
        if finest is not None:
            out = out + [self.finest_conv(finest, text_states, text_mask, features, finest_given)]
        if per_level:
            out = merge_passes(out, self.config.num_levels)
        if self.code_head is None or target_bits is None:
            return out
        group_bits = self.code_head.group_bits
        return [self.code_head(f, bits_to_codes(b, group_bits)) for f, b in zip(out, target_bits)]

    def new_cache(self, batch: int | None = None) -> KVCache:
        return self.transformer.new_cache(batch)

    def forward_level(self, step, step_input, text_states, text_mask, cache: KVCache, finest_given=None):
        """One step's output with the cache (a level's, or a pass of the finest level: generator.passes).
        With finest_head "conv" the finest level's logits come from `FinestConv`, which needs no keys
        (finest_given: the finest bits drawn so far and their flags, for one that draws in passes); with
        finest_conv_features the cache keeps the transformer's last-step features for it."""
        last = self.config.num_levels - 1
        if self.finest_conv is not None and step == last:
            if cache.levels_done != step:
                raise ValueError(f"cache holds {cache.levels_done} level(s); the finest level needs {step}")
            return self.finest_conv(step_input, text_states, text_mask, cache.features, finest_given)
        if self.finest_conv is not None and self.config.finest_conv_features and step == last - 1:
            logits, cache.features = self.transformer.forward_level(step, step_input, text_states, text_mask, cache,
                                                                    return_features=True)
            return logits
        return self.transformer.forward_level(step, step_input, text_states, text_mask, cache)

    def generate(self, quantizer, prompt_embeds, prompt_mask, latent_grid, **kwargs):
        """Sample a `TokenPyramid`; see `generator.sampling.generate` for the arguments."""
        return generate(self, quantizer, prompt_embeds, prompt_mask, latent_grid, **kwargs)
