"""Configs of the text-to-video generator: the model (`GeneratorConfig`) and its training run.

Part of PyraTok's generation stage (a next-scale transformer over LaPQ token pyramids); both
dataclasses round-trip through `pyratok.config` (YAML files plus `--set a.b=c` overrides).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from pyratok.nextscale import NextScaleConfig
from pyratok.training import TrainConfig

from .heads import HEADS

FINEST_HEADS = ("transformer", "conv")


@dataclass
class GeneratorConfig(NextScaleConfig):
    """`NextScaleConfig` plus the learned null text used for classifier-free guidance and the output head.

    head: "bits" - one logit per bit, each bit drawn on its own (Infinity); "group_codes" - each group of
    `head_group_bits` bits one softmax over its 2^head_group_bits codes; "group_codes_sequential" - the
    same, a token's groups drawn in order, each seeing the earlier ones (generator.heads).

    finest_head: "transformer" - the transformer draws every level; "conv" - it draws levels 0..L-2 and a
    3D CNN of `finest_conv_width` channels and `finest_conv_blocks` residual blocks draws the finest
    level from z_hat_<L and the caption (generator.finest_conv; bitwise); with
    `finest_conv_features` it also reads the hidden states of the transformer's last step (level L-2).
    With `finest_conv_passes` P > 1 it draws the finest level's bits in P passes, a cosine-scheduled random
    share each, every pass seeing the bits drawn before it, in its token and around it; it is then trained
    with a random share of each clip's finest bits given (generator.finest_conv.given_bits).

    phrase_tokens: each phrase of the caption ("a red circle moving left", "a blue square moving up": split
    at "and") encoded on its own and appended as one more text token (`TextEncoder.phrases`), so that an
    object's colour, shape and motion reach the generator bound in one vector; needs text_mode "cross".
    word_tokens False (with phrase_tokens): the text is the phrase vectors alone, so an object's motion can
    reach the generator only in the vector that also names its colour and shape.
    """

    num_null_tokens: int = 1
    head: str = "bits"
    head_group_bits: int = 8  # group_codes*: bits per code (LaPQ's bits_per_group, the order refine_groups uses)
    head_hidden: int = 256  # group_codes*: hidden width of the code MLP
    finest_passes: int = 1  # > 1: the finest level drawn in that many interleaved passes (generator.passes)
    finest_head: str = "transformer"
    finest_conv_width: int = 64  # finest_head "conv": channels (a multiple of 8: GroupNorm's groups)
    finest_conv_blocks: int = 4  # finest_head "conv": residual blocks of two 3x3x3 convolutions
    finest_conv_features: bool = False  # finest_head "conv": it also reads the transformer's last-step features
    finest_conv_passes: int = 1  # finest_head "conv": > 1 draws the finest bits in that many passes (see above)
    phrase_tokens: bool = False  # the text is the caption's token states, then one vector per phrase (see below)
    word_tokens: bool = True  # False (needs phrase_tokens): the phrase vectors alone, no token states

    def __post_init__(self):
        super().__post_init__()
        if self.num_null_tokens < 1:
            raise ValueError(f"num_null_tokens must be >= 1, got {self.num_null_tokens}")
        if self.finest_passes < 1:
            raise ValueError(f"finest_passes must be >= 1, got {self.finest_passes}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.head != "bits":
            if not 1 <= self.head_group_bits <= 12 or self.num_bits % self.head_group_bits:
                raise ValueError(f"head_group_bits={self.head_group_bits} must be in [1, 12] and divide "
                                 f"num_bits={self.num_bits}")
            if self.head_hidden < 1:
                raise ValueError(f"head_hidden must be >= 1, got {self.head_hidden}")
        if self.finest_head not in FINEST_HEADS:
            raise ValueError(f"finest_head must be one of {FINEST_HEADS}, got {self.finest_head!r}")
        if self.phrase_tokens and self.text_mode != "cross":
            raise ValueError(f"phrase_tokens=True needs text_mode='cross' (the phrases are keys, not positions), "
                             f"got {self.text_mode!r}")
        if not self.word_tokens and not self.phrase_tokens:
            raise ValueError("word_tokens=False leaves the generator no text: it needs phrase_tokens=True")
        if self.finest_conv_features and self.finest_head != "conv":
            raise ValueError(f"finest_conv_features=True needs finest_head='conv', got {self.finest_head!r}")
        if self.finest_conv_passes < 1 or (self.finest_conv_passes > 1 and self.finest_head != "conv"):
            raise ValueError(f"finest_conv_passes must be >= 1, and > 1 needs finest_head='conv'; got "
                             f"{self.finest_conv_passes} with finest_head={self.finest_head!r}")
        if self.finest_head == "conv":
            if self.head != "bits" or self.finest_passes != 1 or self.num_levels < 2:
                raise ValueError(f"finest_head='conv' needs head='bits', finest_passes=1 and num_levels >= 2, got "
                                 f"head={self.head!r}, finest_passes={self.finest_passes}, num_levels={self.num_levels}")
            if self.finest_conv_width < 8 or self.finest_conv_width % 8 or self.finest_conv_blocks < 0:
                raise ValueError(f"finest_conv_width must be a positive multiple of 8 and finest_conv_blocks >= 0, "
                                 f"got {self.finest_conv_width} and {self.finest_conv_blocks}")


@dataclass
class GeneratorTrainLoop(TrainConfig):
    """The shared `train` knobs (pyratok.training.TrainConfig) plus the generator's own."""

    output_dir: str = "runs/generator"  # checkpoints/, logs/, generator/ (final export)
    batch_size: int = 8  # per process
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    text_dropout: float = 0.1  # share of samples trained with the null text (classifier-free guidance)
    self_correction_prob: float = 0.0  # Infinity's bitwise self-correction: flip rate of teacher-forced bits
    ema_decay: float = 0.999  # EMA of the weights (diffusers EMAModel), exported beside them; 0: none
    init_from: str | None = None  # a saved generator folder to start from (a new stage: fresh optimizer, step 0),
    # e.g. a generator trained on coarser clips: positions are normalised coordinates, so any grid fits
    grow_from_init: bool = False  # init_from may be smaller (fewer finest passes, fewer blocks): load_saved_weights
    contrast_weight: float = 0.0  # caption-contrastive term (generator.contrast); needs a cache with swapped captions
    contrast_tau: float = 0.01  # its temperature, in nats per bit of a clip's likelihood ratio
    finest_edge_share: float = 0.0  # > 0: the finest level's loss weighs 1 on each clip's share of tokens where the
    finest_flat_weight: float = 1.0  # coarser levels change most, this elsewhere (objective.finest_edge_weights)

    def __post_init__(self):
        super().__post_init__()
        for name in ("text_dropout", "self_correction_prob", "ema_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if not (math.isfinite(self.contrast_weight) and self.contrast_weight >= 0):
            raise ValueError(f"train.contrast_weight must be a finite number >= 0, got {self.contrast_weight}")
        if not (math.isfinite(self.contrast_tau) and self.contrast_tau > 0):
            raise ValueError(f"train.contrast_tau must be a finite number > 0, got {self.contrast_tau}")
        if not 0.0 <= self.finest_edge_share <= 1.0:
            raise ValueError(f"train.finest_edge_share must be in [0, 1], got {self.finest_edge_share}")
        if not 0.0 <= self.finest_flat_weight <= 1.0:
            raise ValueError(f"train.finest_flat_weight must be in [0, 1], got {self.finest_flat_weight}")


@dataclass
class GeneratorDataConfig:
    token_cache_dir: str = "runs/token_cache"  # made by generator.build_cache (generator.token_cache)


def _decay_steps(n: int) -> dict:
    """The old `decay_steps: N` (linear anneal to 0 over the last N steps) as a transformers schedule."""
    if not n:
        return {}
    return {"train.lr_scheduler": "warmup_stable_decay",
            "train.lr_scheduler_kwargs": {"num_decay_steps": n, "decay_type": "linear"}}


_MOVED = ("output_dir", "seed", "batch_size", "gradient_accumulation_steps", "max_steps", "lr", "weight_decay",
          "betas", "warmup_steps", "max_grad_norm", "self_correction_prob", "mixed_precision", "save_every",
          "checkpoints_total_limit", "log_every", "num_workers", "write_param_checksum")


@dataclass
class GeneratorTrainConfig:
    model: GeneratorConfig = field(default_factory=GeneratorConfig)
    data: GeneratorDataConfig = field(default_factory=GeneratorDataConfig)
    train: GeneratorTrainLoop = field(default_factory=GeneratorTrainLoop)

    RENAMED_KEYS: ClassVar[dict] = {
        **{k: f"train.{k}" for k in _MOVED}, "cfg_dropout": "train.text_dropout",
        "token_cache_dir": "data.token_cache_dir", "decay_steps": _decay_steps,
    }

    def __post_init__(self):
        if self.train.contrast_weight > 0 and self.model.sequence_parallel_size > 1:
            raise ValueError(f"train.contrast_weight={self.train.contrast_weight} scores whole clips; sequence "
                             f"parallelism (model.sequence_parallel_size={self.model.sequence_parallel_size}) "
                             "splits them over ranks: use one or the other")
