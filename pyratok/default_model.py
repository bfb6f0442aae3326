"""Where the shipped default model lives: `checkpoints/pyratok-shapes-tiny/` at the repository root.

The pipeline folder trained on Shapes (SHAPES.md) that `pyratok generate` and `pyratok demo` use by default.
"""
from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_NAME = "pyratok-shapes-tiny"


def default_model_folder() -> Path:
    """The expected folder, `<repo root>/checkpoints/pyratok-shapes-tiny` (found from the `pyratok`
    package folder, so it works for the editable install); it may not exist."""
    return Path(__file__).resolve().parent.parent / "checkpoints" / DEFAULT_MODEL_NAME


def default_model_path() -> Path:
    """The default model folder; FileNotFoundError naming the expected path when it is missing."""
    folder = default_model_folder()
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the default model is missing: expected a pipeline folder with model_index.json at {folder} "
            "(train it, or pass --model DIR)"
        )
    return folder
