"""Configs of the text-to-video generator: the model (`GeneratorConfig`) and its training run.

Part of PyraTok's generation stage (a next-scale transformer over LaPQ token pyramids); both
dataclasses round-trip through `pyratok.config` (YAML files plus `--set a.b=c` overrides).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pyratok.nextscale import NextScaleConfig

MIXED_PRECISION = (None, "no", "fp16", "bf16")


@dataclass
class GeneratorConfig(NextScaleConfig):
    """`NextScaleConfig` plus the learned null text used for classifier-free guidance."""

    num_null_tokens: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.num_null_tokens < 1:
            raise ValueError(f"num_null_tokens must be >= 1, got {self.num_null_tokens}")


@dataclass
class GeneratorTrainConfig:
    model: GeneratorConfig = field(default_factory=GeneratorConfig)
    token_cache_dir: str = "runs/token_cache"  # made by generator.token_cache.build_token_cache
    output_dir: str = "runs/generator"  # checkpoints/, logs/, generator/ (final export)
    seed: int = 0
    batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000  # optimizer steps
    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    decay_steps: int = 0  # warmup-stable-decay: the last N steps before max_steps anneal lr linearly to 0
    max_grad_norm: float = 1.0
    cfg_dropout: float = 0.1  # share of samples trained with the null text
    self_correction_prob: float = 0.0  # Infinity's bitwise self-correction: flip rate of teacher-forced bits
    mixed_precision: str | None = None  # None: whatever `accelerate launch` says; else "no" | "fp16" | "bf16"
    save_every: int = 500  # accelerator.save_state every N optimizer steps (and at the end)
    checkpoints_total_limit: int | None = 3
    log_every: int = 10
    num_workers: int = 0
    write_param_checksum: bool = False  # each rank writes a checksum of its parameters (tests)

    def __post_init__(self):
        for name in ("batch_size", "gradient_accumulation_steps", "max_steps", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("cfg_dropout", "self_correction_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if not 0 <= self.decay_steps <= self.max_steps:
            raise ValueError(f"decay_steps must be in [0, max_steps={self.max_steps}], got {self.decay_steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
