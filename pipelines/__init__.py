"""User-facing side of PyraTok: the diffusers-style text-to-video pipeline and the `pyratok` command line.

Implements DESIGN.md "Pipeline"; the pipeline class loads lazily so the CLI starts fast.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "PyraTokT2VPipeline": "pipelines.pipeline_pyratok_t2v",
    "PyraTokT2VPipelineOutput": "pipelines.pipeline_pyratok_t2v",
    "export_to_video": "pipelines.video_export",
    "generate_batch": "pipelines.batch",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
