"""Saving and loading PyraTok pipeline folders: diffusers' generic loader, old folders, damaged weights.

The packaging side of DESIGN.md "Pipeline": `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`
finds the installed `PyraTokT2VPipeline` through a two-line file that `save_pretrained` writes next to
model_index.json; folders saved with the old component names (tokenizer / generator / text_tokenizer) still load.
"""
from __future__ import annotations

import importlib
import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

# diffusers' generic loader resolves `"_class_name": [file stem, class]` by running `<folder>/<file stem>.py`
REMOTE_CODE_STEM = "pipeline_pyratok"
REMOTE_CODE_TEXT = '''"""Lets `DiffusionPipeline.from_pretrained(<this folder>, trust_remote_code=True)` return
the installed PyraTok pipeline (`pip install pyratok`): this file only imports it."""
from pipelines.pipeline_pyratok_t2v import PyraTokT2VPipeline  # noqa: F401
'''
# old component name -> diffusers' name (the PyraTok tokenizer is the `vae`, the generator the `transformer`)
LEGACY_NAMES = {"tokenizer": "vae", "generator": "transformer", "text_encoder": "text_encoder",
                "text_tokenizer": "tokenizer"}


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def mark_for_generic_loader(folder: str | Path, class_name: str) -> None:
    """After diffusers' save: write the two-line pipeline file and name it in model_index.json."""
    folder = Path(folder)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = [REMOTE_CODE_STEM, class_name]
    atomic_write_text(folder / f"{REMOTE_CODE_STEM}.py", REMOTE_CODE_TEXT)
    atomic_write_text(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")


def plain_class_name(config: dict, class_name: str) -> dict:
    """model_index with `_class_name` [file stem, class_name] read as plain `class_name`.

    The class's own `from_pretrained` needs no file from the folder; diffusers would otherwise run
    that file, which it only does with trust_remote_code=True.
    """
    name = config.get("_class_name")
    if isinstance(name, (list, tuple)) and len(name) == 2 and name[1] == class_name:
        return {**config, "_class_name": class_name}
    return config


def is_legacy_folder(folder: str | Path) -> bool:
    """True for a folder saved before the diffusers names (its model_index has a `generator` entry)."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return False
    config = json.loads(index.read_text())
    return "generator" in config or "text_tokenizer" in config


def load_legacy_components(folder: str | Path, torch_dtype: torch.dtype | None = None) -> dict:
    """The components of an old folder under diffusers' names, plus `sample_size`; warns once."""
    folder = Path(folder)
    config = json.loads((folder / "model_index.json").read_text())
    warnings.warn(f"{folder} uses the old component names (tokenizer, generator, text_tokenizer); loading them as "
                  "vae, transformer, tokenizer. Save the pipeline again with save_pretrained to update the folder.",
                  FutureWarning, stacklevel=3)
    components = {}
    for old, new in LEGACY_NAMES.items():
        library, class_name = config.get(old) or (None, None)
        if library is None:
            components[new] = None
            continue
        cls = getattr(importlib.import_module(library), class_name)
        is_model = isinstance(cls, type) and issubclass(cls, torch.nn.Module)
        kwargs = {"torch_dtype": torch_dtype} if (is_model and torch_dtype is not None) else {}
        components[new] = cls.from_pretrained(str(folder / old), **kwargs)
    components["sample_size"] = config.get("sample_size")
    return components


def check_finite_weights(modules: dict[str, torch.nn.Module | None]) -> None:
    """ValueError naming the first parameter or buffer with NaN/inf values (a damaged weights file)."""
    for component, module in modules.items():
        if not isinstance(module, torch.nn.Module):
            continue
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.is_floating_point() and not tensor.is_meta and not torch.isfinite(tensor).all():
                bad = int((~torch.isfinite(tensor)).sum())
                source = getattr(getattr(module, "config", None), "_name_or_path", None)
                where = f" in {source}" if source else ""
                raise ValueError(f"{component} weight {name!r}{where} has {bad} non-finite values of {tensor.numel()}: "
                                 "the weights file is damaged; restore or re-download it")


@contextmanager
def quiet_loading():
    """diffusers' and transformers' loading progress bars off inside the block, as they were after it."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in states:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, enabled in states:
            if enabled:
                lib.enable_progress_bar()


def onload(module) -> None:
    """Model CPU offload hooks fire on `forward`; this pipeline calls other methods, so trigger them here."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(module)
