"""User-facing side of PyraTok: the diffusers-style text-to-video pipeline and the `pyratok` command line.

Implements DESIGN.md "Pipeline"; the pipeline class loads lazily so the CLI starts fast.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"PyraTokT2VPipeline": "pipelines.pipeline_pyratok_t2v"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
