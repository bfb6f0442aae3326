"""The training scaffold shared by the tokenizer, alignment and generator trainers.

Training infrastructure of PyraTok: one `train` config section (`config`), kill-safe pickle-free
checkpoints (`checkpoint`) and the loop with exact resume (`loop.Trainer`, imported from there).
"""
from .checkpoint import find_checkpoint, list_checkpoints, step_of
from .config import TrainConfig

__all__ = ["TrainConfig", "find_checkpoint", "list_checkpoints", "step_of"]
