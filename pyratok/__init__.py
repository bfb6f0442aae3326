"""PyraTok: a language-aligned pyramidal video tokenizer (arXiv 2601.16210).

Public names load lazily so `import pyratok` stays cheap (no diffusers import until used).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "pyratok.config",
    "load_config": "pyratok.config",
    "save_config": "pyratok.config",
    "TokenPyramid": "pyratok.pyramid",
    "LaPQ": "pyratok.lapq",
    "LaPQConfig": "pyratok.lapq",
    "PyraTokTokenizer": "pyratok.tokenizer",
    "TextEncoder": "pyratok.text_encoder",
    "read_video": "pyratok.data.video_io",
    "write_video": "pyratok.data.video_io",
    "VideoReadError": "pyratok.data.video_io",
    "ShapesDataset": "pyratok.data.shapes",
    "VideoTextDataset": "pyratok.data.folder",
    "PyraTokT2VPipeline": "pipelines",
    "default_model_path": "pyratok.default_model",
    "default_tokenizer_path": "pyratok.default_model",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pyratok' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
