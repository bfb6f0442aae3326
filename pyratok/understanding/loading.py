"""Load the models that zero-shot understanding needs: a PyraTok tokenizer and its text encoder.

Accepts a pipeline folder (`vae/`, `text_encoder/`, `tokenizer/` subfolders as PyraTok's diffusers pipeline
saves them; older ones: `tokenizer/`, `text_tokenizer/`) or a bare tokenizer folder (text encoder: MiniLM).
"""
from __future__ import annotations

from pathlib import Path

import torch


def tokenizer_folder(model_dir: str | Path) -> Path:
    """`model_dir/vae` (old folders: `model_dir/tokenizer`) for a pipeline folder, `model_dir` itself for a
    tokenizer folder."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    for candidate in (model_dir / "vae", model_dir / "tokenizer", model_dir):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{model_dir} holds neither vae/config.json nor config.json: "
                            "pass a saved pipeline or tokenizer folder")


def default_model_dir() -> Path:
    """The shipped tokenizer (`pyratok.default_model.default_tokenizer_path`: LaPQ on the parent VAE with its
    alignment stage), whose understanding figures beat the shipped pipeline's own tokenizer (README)."""
    try:
        from pyratok.default_model import default_tokenizer_path
    except ImportError as err:
        raise FileNotFoundError(f"no default tokenizer is available ({err}); pass --model DIR") from None
    return Path(default_tokenizer_path())


def load_text_encoder(model_dir: str | Path, device: str | torch.device = "cpu"):
    """The pipeline's `text_encoder/` (+ its `tokenizer/`, old folders `text_tokenizer/`) when present, else
    the bundled MiniLM."""
    from pyratok.text_encoder import TextEncoder

    model_dir = Path(model_dir)
    encoder = model_dir / "text_encoder"
    if (encoder / "config.json").is_file():
        words = next((model_dir / name for name in ("text_tokenizer", "tokenizer")
                      if (model_dir / name / "tokenizer_config.json").is_file()), None)
        return TextEncoder.from_pretrained(encoder, device=device, tokenizer_path=words)
    return TextEncoder.from_pretrained(device=device)


def load_models(model_dir: str | Path | None = None, device: str | torch.device = "cpu"):
    """(tokenizer in eval mode, text encoder) from `model_dir`, default: the shipped tokenizer."""
    from pyratok.tokenizer import PyraTokTokenizer

    model_dir = default_model_dir() if model_dir is None else Path(model_dir)
    tokenizer = PyraTokTokenizer.from_pretrained(tokenizer_folder(model_dir)).to(device).eval()
    return tokenizer, load_text_encoder(model_dir, device)
