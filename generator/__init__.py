"""PyraTok's text-to-video generator: a next-scale transformer over LaPQ token pyramids.

Model (`PyraTokGenerator`), sampling (`generate`), token cache and training (`python -m generator.train`).
"""
from .config import GeneratorConfig, GeneratorTrainConfig
from .model import PyraTokGenerator
from .sampling import generate
from .token_cache import TokenCacheDataset, build_token_cache

__all__ = [
    "GeneratorConfig", "GeneratorTrainConfig", "PyraTokGenerator", "TokenCacheDataset", "build_token_cache", "generate",
]
