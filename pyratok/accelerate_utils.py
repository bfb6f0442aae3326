"""Accelerator set-up shared by the training scripts: CPU-friendly process groups, trackers.

Supports the training of PyraTok's tokenizer and generator (§4) under `accelerate launch`:
on machines without CUDA, multi-process runs use the gloo backend.
"""
from __future__ import annotations

import gc
import hashlib
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    GradientAccumulationPlugin,
    InitProcessGroupKwargs,
    ProjectConfiguration,
)


def launched_distributed() -> bool:
    """True under `accelerate launch`/torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_with_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def make_accelerator(
    output_dir: str | Path,
    mixed_precision: str | None = None,
    find_unused_parameters: bool = False,
    gradient_accumulation_steps: int = 1,
    data_seed: int | None = None,
    report_to: str = "tensorboard",
) -> Accelerator:
    """An Accelerator logging to `output_dir/logs` (report_to: "tensorboard", "wandb" offline, "none").

    mixed_precision None: the launcher's setting. Gradients accumulate over exactly
    `gradient_accumulation_steps` micro-batches, across epoch ends too (so a step's micro-batches
    follow from its number alone, which exact resume needs).

    `data_seed`: shuffle through accelerate's seedable sampler with this seed (the same order on every
    rank and after a resume); None keeps the DataLoader's own sampler.

    Without CUDA, processes talk over gloo: DDP runs as accelerate's MULTI_CPU (`cpu=True`; without it
    accelerate reports DistributedType.NO and never wraps the model), DeepSpeed through deepspeed.comm.
    """
    on_cpu = not torch.cuda.is_available()
    handlers = []
    if find_unused_parameters:
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    if launched_distributed() and on_cpu:
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    out = Path(output_dir)
    if report_to == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ValueError("report_to='wandb' needs the wandb package (pip install wandb)") from None
        os.environ.setdefault("WANDB_MODE", "offline")  # runs here never reach a server; `wandb sync` later
        os.environ.setdefault("WANDB_DIR", str(out / "logs"))
    elif report_to not in ("tensorboard", "none"):
        raise ValueError(f"report_to must be 'tensorboard', 'wandb' or 'none', got {report_to!r}")
    return Accelerator(
        cpu=on_cpu and not launched_with_deepspeed(),
        mixed_precision=mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=gradient_accumulation_steps, sync_with_dataloader=False),
        log_with=None if report_to == "none" else report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=data_seed is not None, data_seed=data_seed),
        kwargs_handlers=handlers,
    )


def shutdown(accelerator: Accelerator) -> None:
    """End trackers and tear the process group down cleanly (2-process gloo runs can abort at exit otherwise)."""
    gc.collect()  # models the caller dropped go before the process group does
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def param_checksum(state_dict: dict) -> str:
    """sha256 over names and float32 bytes of every tensor: equal only if bitwise equal."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def process_state():
    """accelerate's `PartialState` for tools that split work across processes without training: gloo
    between CPU processes under `accelerate launch` (accelerate needs cpu=True for that), else as launched."""
    from accelerate import PartialState

    return PartialState(cpu=True) if launched_distributed() and not torch.cuda.is_available() else PartialState()
