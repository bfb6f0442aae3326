"""Dataclass configs that round-trip to YAML/JSON, with `--set a.b=c` overrides.

Every model and run in the project is configured by a dataclass; this module loads,
validates (an unknown key is an error naming the key), overrides and saves them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path
import warnings
from typing import Any, Callable, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override does not match its dataclass."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Turn a plain YAML value into the field's declared type (dataclass, tuple, list)."""
    if value is None:
        return None
    tp = _strip_optional(tp)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return config_from_dict(tp, value, prefix=where)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a sequence, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {value!r}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args or [Any] * len(value), value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        inner = args[1] if len(args) == 2 else Any
        return {k: _coerce(inner, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `1e-4` as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def config_from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys raise `ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown config key {key!r} for {cls.__name__} (known: {sorted(names)})")
    kwargs = {k: _coerce(hints[k], v, f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples become lists) suitable for YAML/JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def flat_dict(cfg: Any) -> dict:
    """A config (dataclass or dict) as flat {a.b: scalar} for TensorBoard hparams (lists become strings)."""
    flat = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk("", cfg if isinstance(cfg, dict) else config_to_dict(cfg))
    return flat


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply `a.b=c` strings to a nested dict; values are parsed as YAML (`1e-4`, `[1,2]`, `true`)."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def cli_overrides(args, flags: dict[str, str]) -> list[str]:
    """`--set` pairs plus one `key=value` for each given shortcut flag: flags maps an argparse dest
    (e.g. "output_dir") to its config key (e.g. "train.output_dir"); later pairs win."""
    overrides = list(getattr(args, "set", None) or [])
    overrides += [f"{key}={getattr(args, dest)}" for dest, key in flags.items() if getattr(args, dest, None)]
    return overrides


def read_config_file(path: str | Path) -> dict:
    """A YAML/JSON mapping; a missing relative `configs/...` path falls back to the shipped configs
    (so the README's commands work from an installed wheel)."""
    from .default_model import shipped_config

    path = Path(path)
    if not path.is_file():
        path = shipped_config(path) or path
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `cls` from a YAML/JSON file (or defaults when `path` is None) plus overrides.

    Keys that `cls.RENAMED_KEYS` lists under an old name (in the file or an override) move to their new
    name, with a warning for each."""
    data = read_config_file(path) if path is not None else {}
    renames = getattr(cls, "RENAMED_KEYS", None)
    if renames:
        data = rename_keys(data, renames, where=str(path))
        overrides = [new for item in overrides or [] for new in rename_override(item, renames)]
    return config_from_dict(cls, apply_overrides(data, overrides))


def save_config(cfg: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(cfg)
    text = json.dumps(data, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # atomic: a killed run never leaves half a config
    return path


# old dotted key -> new dotted key, or a function of the old value giving {new dotted key: value}
Renames = dict[str, str | Callable[[Any], dict[str, Any]]]


def _pop(data: dict, dotted: str) -> tuple[bool, Any]:
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node = node.get(p)
        if not isinstance(node, dict):
            return False, None
    return (True, node.pop(leaf)) if leaf in node else (False, None)


def _put(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node.setdefault(leaf, value)  # a key already under its new name wins over the old one


def rename_keys(data: dict, renames: Renames, where: str = "config") -> dict:
    """Move each old key of `data` (nested dict) to its new place, with a warning naming both."""
    for old, new in renames.items():
        found, value = _pop(data, old)
        if not found:
            continue
        moved = new(value) if callable(new) else {new: value}
        names = ", ".join(moved) or "nothing (dropped)"
        warnings.warn(f"{where}: config key {old!r} is renamed: now {names}", UserWarning, stacklevel=3)
        for key, v in moved.items():
            _put(data, key, v)
    return data


def rename_override(item: str, renames: Renames) -> list[str]:
    """`--set old.key=value` -> the same override under its new key(s), with a warning."""
    key, sep, raw = item.partition("=")
    if not sep or key.strip() not in renames:
        return [item]
    data: dict = {}
    _put(data, key.strip(), yaml.safe_load(raw))
    rename_keys(data, {key.strip(): renames[key.strip()]}, where="--set")
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in _flatten(data).items()]


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
