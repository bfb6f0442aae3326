"""Lets `DiffusionPipeline.from_pretrained(<this folder>, trust_remote_code=True)` return
the installed PyraTok pipeline (`pip install pyratok`): this file only imports it."""
from pipelines.pipeline_pyratok_t2v import PyraTokT2VPipeline  # noqa: F401
