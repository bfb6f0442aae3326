"""Kill-safe, pickle-free training checkpoints: `<output_dir>/checkpoints/checkpoint-<step>`.

Training infrastructure of PyraTok (every stage): a checkpoint is written to a temporary folder and
renamed into place once complete; its `manifest.json` (written last) lists every file with its size,
so `latest` skips an empty, partial or truncated folder. Tensors go through safetensors (optimizer
state through `torch.load(weights_only=True)`), everything else through JSON: nothing is unpickled.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

MANIFEST = "manifest.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def step_of(path: str | Path) -> int:
    m = _CKPT.match(Path(path).name)
    if not m:
        raise ValueError(f"not a checkpoint folder (expected checkpoint-<step>): {path}")
    return int(m.group(1))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """`checkpoint-<step>` folders under output_dir/checkpoints (complete or not), oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = [p for p in root.glob("checkpoint-*") if _CKPT.match(p.name) and p.is_dir()] if root.is_dir() else []
    return sorted(found, key=step_of)


def problem(path: str | Path) -> str | None:
    """Why `path` is not a complete checkpoint (None if it is): no manifest, a missing or resized file."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        if manifest["step"] != step_of(path) or not files:
            return f"manifest.json is for step {manifest['step']} or lists no files"
    except FileNotFoundError:
        return "no manifest.json (incomplete, or not written by pyratok.training)"
    except (ValueError, KeyError, TypeError) as err:
        return f"unreadable manifest.json ({type(err).__name__}: {err})"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"missing {name}"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {size}"
    return None


def find_checkpoint(output_dir: str | Path, resume: str | None) -> Path | None:
    """The folder to resume from: None (no resume, or 'latest' before any complete checkpoint: start
    fresh); for 'latest' the newest complete checkpoint, skipping broken ones with a warning; else the
    given checkpoint-<step> folder, which must be complete."""
    if resume is None:
        return None
    if resume == "latest":
        for path in reversed(list_checkpoints(output_dir)):
            why = problem(path)
            if why is None:
                return path
            warnings.warn(f"skipping checkpoint {path}: {why}", UserWarning, stacklevel=2)
        return None
    path = Path(resume)
    if not path.is_dir() or not _CKPT.match(path.name):
        raise ValueError(f"--resume_from_checkpoint must be 'latest' or a checkpoint-<step> folder, got {resume!r}")
    why = problem(path)
    if why is not None:
        raise ValueError(f"checkpoint {path} is incomplete: {why}")
    return path


def begin(output_dir: str | Path, step: int) -> Path:
    """A fresh temporary folder for checkpoint `step` (main process; leftovers of killed saves go)."""
    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f"tmp-checkpoint-{step}"
    tmp.mkdir()
    return tmp


def commit(tmp: Path, step: int) -> Path:
    """Write the manifest (sizes of every file) last, then rename `tmp` to checkpoint-<step>."""
    files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    write_json(tmp / MANIFEST, {"step": step, "files": files})
    final = tmp.parent / f"checkpoint-{step}"
    if final.exists():  # a rerun into the same output_dir: the new checkpoint replaces the old
        old = tmp.parent / f"tmp-old-checkpoint-{step}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    return final


def prune(output_dir: str | Path, limit: int | None, keep: Path | None = None) -> None:
    """Keep the newest `limit` checkpoints (None: all), and `keep` (the one just written) in any case."""
    if limit:
        for old in list_checkpoints(output_dir)[:-limit]:
            if keep is None or old.resolve() != keep.resolve():
                shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not JSON ({err})") from None


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """safetensors' `load_file` onto `device`; an indexed CPU device (accelerate's "cpu:0" under multi-CPU DDP),
    which safetensors refuses, is the CPU."""
    device = torch.device(device)
    try:
        return load_file(str(path), device="cpu" if device.type == "cpu" else str(device))
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise ValueError(f"{path} is not a safetensors file ({err})") from None


def save_rng_state(path: Path) -> None:
    """torch (CPU and every CUDA device), numpy and Python `random` states of this process."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, state, gauss_next = random.getstate()
    meta = {"numpy": json.dumps([kind, int(pos), int(has_gauss), float(gauss)]),
            "python": json.dumps([version, list(state), gauss_next])}
    save_file(tensors, str(path), metadata=meta)


def load_rng_state(path: Path) -> None:
    tensors = load_tensors(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    try:
        kind, pos, has_gauss, gauss = json.loads(meta["numpy"])
        version, state, gauss_next = json.loads(meta["python"])
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: bad random-state metadata ({err})") from None
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate((version, tuple(state), gauss_next))


def save_optimizer(optimizer, path: Path) -> None:
    torch.save(optimizer.state_dict(), str(path))


def load_optimizer(optimizer, path: Path) -> None:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses anything but tensors and plain containers
        raise ValueError(f"{path} is not a plain optimizer state ({type(err).__name__}: {err})") from None
    optimizer.load_state_dict(state)


def save_ema(ema, folder: Path) -> None:
    """A diffusers EMAModel: shadow weights as safetensors (ema.safetensors), the rest as JSON (ema.json)."""
    state = ema.state_dict()
    save_file({f"{i}": p.contiguous() for i, p in enumerate(state.pop("shadow_params"))}, str(folder / "ema.safetensors"))
    write_json(folder / "ema.json", state)


def load_ema(ema, folder: Path, device: str | torch.device = "cpu") -> None:
    shadow = load_tensors(folder / "ema.safetensors", device)
    if len(shadow) != len(ema.shadow_params):
        raise ValueError(f"{folder / 'ema.safetensors'} holds {len(shadow)} weights, the model has {len(ema.shadow_params)}")
    ema.load_state_dict(read_json(folder / "ema.json") | {"shadow_params": [shadow[f"{i}"] for i in range(len(shadow))]})


def save_module_state(module: torch.nn.Module, path: Path) -> None:
    """Parameters and buffers; tensors that share memory are stored once (safetensors save_model)."""
    from safetensors.torch import save_model

    save_model(module, str(path))


def load_module_state(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    try:
        load_model(module, str(path), strict=True, device=str(next(module.parameters()).device))
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit the model ({err})") from None
    except Exception as err:
        raise ValueError(f"{path} is not a safetensors file ({err})") from None
