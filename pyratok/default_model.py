"""Where the shipped default model and configs live: the repository checkout, else the installed wheel.

The pipeline folder trained on Shapes (SHAPES.md) that `pyratok generate` and `pyratok demo` use by default,
and `configs/`; a wheel carries both as package data (`pyratok/shipped_model`, `pyratok/shipped_configs`).
"""
from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_NAME = "pyratok-shapes-tiny"
_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent  # the repository root in a checkout or an editable install


def default_model_folder() -> Path:
    """`<repo root>/checkpoints/pyratok-shapes-tiny` in a checkout, else the wheel's `pyratok/shipped_model`;
    it may not exist."""
    checkout = _CHECKOUT / "checkpoints" / DEFAULT_MODEL_NAME
    wheel = _PACKAGE / "shipped_model"
    return checkout if checkout.is_dir() or not wheel.is_dir() else wheel


def default_model_path() -> Path:
    """The default model folder; FileNotFoundError naming the expected path when it is missing."""
    folder = default_model_folder()
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the default model is missing: expected a pipeline folder with model_index.json at {folder} "
            "(train it, or pass --model DIR)"
        )
    return folder


def configs_folder() -> Path:
    """`<repo root>/configs` in a checkout, else the wheel's `pyratok/shipped_configs`."""
    checkout = _CHECKOUT / "configs"
    return checkout if checkout.is_dir() else _PACKAGE / "shipped_configs"


def shipped_config(path: str | Path) -> Path | None:
    """A relative `configs/...` path (as the README writes them) resolved to the shipped file, or None."""
    parts = Path(path).parts
    if Path(path).is_absolute() or len(parts) < 2 or parts[0] != "configs":
        return None
    candidate = configs_folder().joinpath(*parts[1:])
    return candidate if candidate.is_file() else None
