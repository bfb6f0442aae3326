"""The `train` config section shared by every trainer, and the renamed keys of older config files.

Training infrastructure of PyraTok (tokenizer §4, alignment §3.3, generator): one set of knob names
for the three trainers; files written before the rename still load, with a message per renamed key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MIXED_PRECISION = (None, "no", "fp16", "bf16")
REPORT_TO = ("tensorboard", "wandb", "none")


@dataclass
class TrainConfig:
    """Knobs every trainer has, under the same names (a trainer's own knobs extend this class)."""

    output_dir: str = "runs/train"  # checkpoints/, logs/, config.yaml and the export
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 4  # per process and micro-batch
    lr: float = 3e-4
    weight_decay: float = 0.0  # AdamW
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    lr_scheduler: str = "constant_with_warmup"  # a name for transformers.get_scheduler
    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict)  # its scheduler_specific_kwargs
    warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0  # 0: no clipping
    mixed_precision: str | None = None  # None: whatever `accelerate launch` says; else "no" | "fp16" | "bf16"
    save_every: int = 500  # a checkpoint every N optimizer steps (and at the end)
    checkpoints_total_limit: int | None = 3  # keep the newest N checkpoints; None keeps all
    seed: int = 0
    report_to: str = "tensorboard"  # "tensorboard" | "wandb" (offline) | "none"
    log_every: int = 10
    num_workers: int = 0
    write_param_checksum: bool = False  # each rank writes a checksum of its parameters (tests DDP sync)

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.max_grad_norm < 0:
            raise ValueError(f"train.warmup_steps and train.max_grad_norm must be >= 0, got "
                             f"{self.warmup_steps} and {self.max_grad_norm}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"train.mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.report_to not in REPORT_TO:
            raise ValueError(f"train.report_to must be one of {REPORT_TO}, got {self.report_to!r}")
        from transformers import SchedulerType

        if self.lr_scheduler not in {t.value for t in SchedulerType}:
            raise ValueError(f"train.lr_scheduler must be a transformers.get_scheduler name "
                             f"({sorted(t.value for t in SchedulerType)}), got {self.lr_scheduler!r}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError(f"train.checkpoints_total_limit must be >= 1 or null, got {self.checkpoints_total_limit}")
