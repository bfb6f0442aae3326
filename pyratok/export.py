"""Write a trained tokenizer folder as a shipped one: the same model, fp16 safetensors (half the bytes).

    python -m pyratok.export --tokenizer runs/model-on-parent/alignment/alignment --out checkpoints/pyratok-tokenizer-tiny

Weights only: a README beside them is written by hand (what it was trained on, what it measures).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .checkpoints import save_half
from .help_format import DefaultsFormatter


def export(tokenizer: str | Path, out: str | Path) -> Path:
    """Load the tokenizer at `tokenizer` (a folder `save_pretrained` wrote) and save it in fp16 to `out`."""
    from .tokenizer import PyraTokTokenizer

    source, out = Path(tokenizer), Path(out)
    if not (source / "config.json").is_file():
        raise ValueError(f"not a saved tokenizer folder (no config.json): {source}")
    if out.resolve() == source.resolve():
        raise ValueError(f"--out must differ from --tokenizer: {out}")
    save_half(PyraTokTokenizer.from_pretrained(source), out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=DefaultsFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True, help="trained tokenizer folder")
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    args = parser.parse_args(argv)
    print("wrote", export(args.tokenizer, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
