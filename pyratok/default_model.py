"""Where the shipped default model, tokenizer and configs live: the repository checkout, else the installed wheel.

The pipeline folder trained on Shapes (SHAPES.md) that `pyratok generate` and `pyratok demo` use by default;
the tokenizer on the parent VAE with its alignment stage, that zero-shot understanding (`pyratok locate`)
uses by default; and `configs/`. A wheel carries them as package data (`pyratok/shipped_model`,
`pyratok/shipped_tokenizer`, `pyratok/shipped_configs`).
"""
from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_NAME = "pyratok-shapes-tiny"
DEFAULT_TOKENIZER_NAME = "pyratok-tokenizer-tiny"
_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent  # the repository root in a checkout or an editable install


def _shipped_folder(name: str, package: str) -> Path:
    """`<repo root>/checkpoints/<name>` in a checkout, else the wheel's `pyratok/<package>`; it may not exist."""
    checkout = _CHECKOUT / "checkpoints" / name
    wheel = _PACKAGE / package
    return checkout if checkout.is_dir() or not wheel.is_dir() else wheel


def default_model_folder() -> Path:
    """`<repo root>/checkpoints/pyratok-shapes-tiny` in a checkout, else the wheel's `pyratok/shipped_model`;
    it may not exist."""
    return _shipped_folder(DEFAULT_MODEL_NAME, "shipped_model")


def default_model_path() -> Path:
    """The default model folder; FileNotFoundError naming the expected path when it is missing."""
    folder = default_model_folder()
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the default model is missing: expected a pipeline folder with model_index.json at {folder} "
            "(train it, or pass --model DIR)"
        )
    return folder


def default_tokenizer_path() -> Path:
    """The shipped tokenizer folder (`checkpoints/pyratok-tokenizer-tiny`, or the wheel's
    `pyratok/shipped_tokenizer`); FileNotFoundError naming the expected path when it is missing."""
    folder = _shipped_folder(DEFAULT_TOKENIZER_NAME, "shipped_tokenizer")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"the default tokenizer is missing: expected a tokenizer folder with config.json at "
                                f"{folder} (train it with `make default-tokenizer`, or pass --model DIR)")
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
