"""Starting weights for tokenizer training (pretrained Wan VAE weights, a saved tokenizer) and shipped folders.

Supports PyraTok's tokenizer stages (§4): `--pretrained_vae DIR` and `train.init_from`; `save_half` writes a
trained model as a shipped folder. Nothing here downloads or unpickles (training checkpoints:
`pyratok.training.checkpoint`).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from .config import config_to_dict


def load_pretrained_wan(tokenizer, path: str | Path) -> None:
    """Copy AutoencoderKLWan weights from a local diffusers folder into the tokenizer's backbone.

    The backbone config must match the pretrained one (use configs/tokenizer/wan2.1.yaml for Wan 2.1).
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"pretrained VAE folder not found: {path}")
    sub = path / "vae" if (path / "vae" / "config.json").is_file() else path
    vae = AutoencoderKLWan.from_pretrained(sub, local_files_only=True)
    mine, theirs = dict(tokenizer.backbone.config), dict(vae.config)
    keys = ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample", "attn_scales", "is_residual",
            "patch_size")
    diff = {k: (mine.get(k), theirs.get(k)) for k in keys if list_or(mine.get(k)) != list_or(theirs.get(k))}
    if diff:
        raise ValueError(f"backbone config differs from the pretrained VAE at {sub}: {diff} (mine, pretrained)")
    tokenizer.backbone.load_state_dict(vae.state_dict())
    tokenizer.backbone.register_to_config(latents_mean=vae.config.latents_mean, latents_std=vae.config.latents_std)
    # into the tokenizer's own config too, so that its save_pretrained keeps the parent's statistics
    backbone = tokenizer.cfg.backbone
    backbone.latents_mean, backbone.latents_std = list(vae.config.latents_mean), list(vae.config.latents_std)
    tokenizer.register_to_config(backbone_config=config_to_dict(backbone))


def load_saved_weights(model, path: str | Path, grow: bool = False) -> None:
    """Start training from a saved model folder (`save_pretrained`: a tokenizer, a generator): every weight,
    strictly.

    The model config must match the saved one; a mismatch names the differing parameter shapes.
    Buffers the saved model lacks (e.g. the running statistics of bit whitening, newly switched on)
    keep their initial values. With `grow`, a tensor may be larger than the saved one in any
    dimension (e.g. a codebook of more bits): the saved values fill the leading block, and a weight's
    new input columns start at zero, so the grown model computes what the saved one did until
    training uses the new entries. Also with `grow`, whole modules the saved model lacks (e.g. the
    blocks of a deeper generator) are allowed when they have a `start_as_identity()` method, which is
    called: such a module adds nothing until trained.
    """
    from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import load_file

    file = Path(path) / SAFETENSORS_WEIGHTS_NAME
    if not file.is_file():
        raise ValueError(f"no {type(model).__name__} weights ({SAFETENSORS_WEIGHTS_NAME}) in {path}")
    state = load_file(str(file))
    mine = model.state_dict()

    def fits(k, v):
        if k not in mine or mine[k].shape == v.shape:
            return k in mine
        return grow and mine[k].dim() == v.dim() and all(a >= b for a, b in zip(mine[k].shape, v.shape))

    bad = {k: (tuple(mine[k].shape) if k in mine else None, tuple(v.shape)) for k, v in state.items() if not fits(k, v)}
    params = {name for name, _ in model.named_parameters()}
    missing = sorted(set(mine) - set(state))
    fresh = [k for k in missing if k not in params]  # running statistics the saved model lacks: start anew
    missing = [k for k in missing if k in params]
    new_modules = _identity_modules(model, missing) if grow else []
    missing = [k for k in missing if not any(k.startswith(f"{name}.") for name, _ in new_modules)]
    if bad or missing:
        raise ValueError(f"{type(model).__name__} at {path} does not match the config: shapes (mine, saved) {bad}, "
                         f"missing {missing[:5]}")
    for k, v in state.items():
        if mine[k].shape != v.shape:
            grown = mine[k].clone()
            if grown.dim() == 2:  # (out, in): new inputs contribute nothing yet
                grown[:, v.shape[1]:] = 0
            grown[tuple(slice(0, n) for n in v.shape)] = v
            state[k] = grown
    for name, module in new_modules:
        module.start_as_identity()
        state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    model.load_state_dict({**{k: mine[k] for k in fresh}, **state})


def _identity_modules(model, missing: list[str]) -> list:
    """(name, module) of the modules wholly new to the saved weights (every parameter in `missing`) that
    can start as the identity (`start_as_identity`); outermost first, none inside another."""
    missing = set(missing)
    found = []
    for name, module in model.named_modules():
        if not hasattr(module, "start_as_identity") or any(name.startswith(f"{f}.") for f, _ in found):
            continue
        keys = {f"{name}.{k}" for k, _ in module.named_parameters()}
        if keys and keys <= missing:
            found.append((name, module))
    return found


def shipped_copy(model, name: str, half: bool = True):
    """A copy of `model` as a shipped folder holds it: in fp16 when `half` (integer buffers keep their dtype;
    `from_pretrained` loads the weights back into an fp32 model), its config's `_name_or_path` set to `name`,
    not the training machine's path. `model` itself is unchanged."""
    shipped = copy.deepcopy(model)
    if half:
        shipped.to(torch.float16)
    shipped.register_to_config(_name_or_path=name)
    return shipped


def save_half(model, folder: str | Path, **config) -> None:
    """`model.save_pretrained(folder)` in fp16 safetensors, half the bytes of a shipped folder, with `config`
    entries added to the saved config (`shipped_copy`: `model` itself is unchanged; `_name_or_path` becomes the
    folder's name)."""
    half = shipped_copy(model, Path(folder).name)
    half.register_to_config(**config)
    half.save_pretrained(folder, safe_serialization=True)


def list_or(v):
    return list(v) if isinstance(v, (list, tuple)) else v
