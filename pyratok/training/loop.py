"""The training scaffold the three trainers share: set-up, loop, schedules, logging, save, resume, export.

Training infrastructure of PyraTok (tokenizer §4, alignment §3.3, generator). A trainer supplies its
model, optimizer, data and a loss function; `Trainer` runs the optimizer steps under accelerate with
gradient accumulation, clipping, a transformers LR schedule, optional EMA, trackers, kill-safe
pickle-free checkpoints and an exact resume (every random stream continues where it stopped).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..accelerate_utils import make_accelerator, param_checksum, shutdown
from ..config import flat_dict, save_config
from . import checkpoint as ckpt
from .config import TrainConfig

LossFn = Callable[[Any, torch.Generator], "tuple[torch.Tensor, dict[str, Any]]"]


def micro_batch_rng(seed: int, micro: int, rank: int) -> torch.Generator:
    """The generator of micro-batch `micro` on `rank` (text dropout, bit flips, batch draws): a function
    of the position alone, so a resumed run draws what the uninterrupted one drew."""
    return torch.Generator().manual_seed(seed * 1_000_000_007 + micro * 1024 + rank)


class Trainer:
    """One training run: `prepare`, `resume`, `fit(loss_fn)`, `export`, `finish`.

    Checkpoints hold the model and optimizer (safetensors / plain torch state), the EMA weights, the
    scheduler, step, micro-batch count (the data position) and every process's random states (JSON /
    safetensors); DeepSpeed's engine writes its own files inside the checkpoint folder.
    """

    def __init__(self, tc: TrainConfig, name: str, config: Any, find_unused_parameters: bool = False):
        self.tc, self.name, self.config = tc, name, config
        self.out = Path(tc.output_dir)
        self.accelerator = make_accelerator(
            self.out, tc.mixed_precision, find_unused_parameters=find_unused_parameters,
            gradient_accumulation_steps=tc.gradient_accumulation_steps, data_seed=tc.seed, report_to=tc.report_to)
        self.step = 0  # optimizer steps done
        self.micro = 0  # micro-batches consumed (the data position)
        self.model = self.optimizer = self.loader = self.scheduler = self.ema = None
        self.last_logs: dict[str, float] = {}

    @property
    def deepspeed(self) -> bool:
        return self.accelerator.state.deepspeed_plugin is not None

    def prepare(self, model: torch.nn.Module, loader=None, ema=None):
        """AdamW over the model's trainable parameters, then accelerate.prepare model, optimizer and
        loader (None: loss_fn draws its own batches); the LR schedule is
        `transformers.get_scheduler(tc.lr_scheduler)`, stepped once per optimizer step."""
        tc, acc = self.tc, self.accelerator
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
        plugin = acc.state.deepspeed_plugin
        if plugin is not None and plugin.deepspeed_config.get("gradient_clipping") == "auto":
            plugin.deepspeed_config["gradient_clipping"] = tc.max_grad_norm  # DeepSpeed clips; ours is skipped
        self.scheduler = get_scheduler(tc.lr_scheduler, optimizer, num_warmup_steps=tc.warmup_steps,
                                       num_training_steps=tc.max_steps,
                                       scheduler_specific_kwargs=dict(tc.lr_scheduler_kwargs) or None)
        if loader is None:
            self.model, self.optimizer = acc.prepare(model, optimizer)
        else:
            self.model, self.optimizer, self.loader = acc.prepare(model, optimizer, loader)
            if len(self.loader) == 0:
                raise ValueError(f"the data gives no batches of {tc.batch_size} (size {len(loader.dataset)})")
        if ema is not None:
            ema.to(acc.device)
        self.ema = ema
        return self.model

    # ---- checkpoints -------------------------------------------------------------------------
    def resume(self, resume: str | None) -> None:
        """Load `resume` ('latest' or a checkpoint folder; None: start fresh), then save the config and
        start the trackers."""
        acc = self.accelerator
        path = ckpt.find_checkpoint(self.out, resume)
        if path is not None:
            self._load(path)
            acc.print(f"resumed from {path} at step {self.step}")
        if acc.is_main_process:
            save_config(self.config, self.out / "config.yaml")
        acc.init_trackers(self.name, config=flat_dict(self.config))

    def save(self) -> Path:
        acc = self.accelerator
        tmp = self.out / "checkpoints" / f"tmp-checkpoint-{self.step}"
        if acc.is_main_process:
            tmp = ckpt.begin(self.out, self.step)
        acc.wait_for_everyone()
        ckpt.save_rng_state(tmp / f"random_states_{acc.process_index}.safetensors")
        if self.deepspeed:  # every rank writes its ZeRO partitions, in DeepSpeed's own format
            self.model.save_checkpoint(str(tmp), tag="deepspeed")
        if acc.is_main_process:
            if not self.deepspeed:
                ckpt.save_module_state(acc.unwrap_model(self.model), tmp / "model.safetensors")
                ckpt.save_optimizer(self.optimizer, tmp / "optimizer.pt")
            if self.ema is not None:
                ckpt.save_ema(self.ema, tmp)
            if acc.scaler is not None:
                ckpt.write_json(tmp / "scaler.json", acc.scaler.state_dict())
            ckpt.write_json(tmp / "scheduler.json", self.scheduler.state_dict())
            ckpt.write_json(tmp / "trainer_state.json", {"step": self.step, "micro": self.micro,
                                                          "num_processes": acc.num_processes})
        acc.wait_for_everyone()
        final = self.out / "checkpoints" / f"checkpoint-{self.step}"
        if acc.is_main_process:
            final = ckpt.commit(tmp, self.step)
            ckpt.prune(self.out, self.tc.checkpoints_total_limit, keep=final)
        acc.wait_for_everyone()
        return final

    def _load(self, path: Path) -> None:
        acc = self.accelerator
        state = ckpt.read_json(path / "trainer_state.json")
        if state.get("num_processes") != acc.num_processes:
            raise ValueError(f"{path} was written by {state.get('num_processes')} process(es), this run has "
                             f"{acc.num_processes}: exact resume needs the same number")
        if self.deepspeed:
            guard_deepspeed_files(path / "deepspeed")
            self.model.load_checkpoint(str(path), tag="deepspeed", load_module_strict=True,
                                       load_optimizer_states=True, load_lr_scheduler_states=False)
        else:
            ckpt.load_module_state(acc.unwrap_model(self.model), path / "model.safetensors")
            ckpt.load_optimizer(self.optimizer, path / "optimizer.pt")
        if self.ema is not None:
            if (path / "ema.json").is_file():
                ckpt.load_ema(self.ema, path, acc.device)
            else:
                acc.print(f"{path} has no EMA weights: the EMA starts from the resumed weights")
                self.ema.shadow_params = [p.detach().clone() for p in acc.unwrap_model(self.model).parameters()]
        if acc.scaler is not None and (path / "scaler.json").is_file():
            acc.scaler.load_state_dict(ckpt.read_json(path / "scaler.json"))
        self.scheduler.load_state_dict(ckpt.read_json(path / "scheduler.json"))
        self.step, self.micro = int(state["step"]), int(state["micro"])
        ckpt.load_rng_state(path / f"random_states_{acc.process_index}.safetensors")

    # ---- the loop ----------------------------------------------------------------------------
    def batches(self) -> Iterator[Any]:
        """Endless micro-batches from the current data position (epoch and offset from `micro`)."""
        if self.loader is None:
            while True:
                yield None
        epoch, skip = divmod(self.micro, len(self.loader))
        while True:
            self.loader.set_epoch(epoch)
            yield from self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
            skip = 0
            epoch += 1

    def fit(self, loss_fn: LossFn, after_step: Callable[[int], None] | None = None) -> int:
        """Optimizer steps until tc.max_steps. loss_fn(batch, rng) -> (loss, logs) on one micro-batch;
        after_step(step) runs after each optimizer step (before a checkpoint is saved)."""
        tc, acc = self.tc, self.accelerator
        bar = tqdm(total=tc.max_steps, initial=self.step, desc=self.name, disable=not acc.is_local_main_process)
        data = self.batches()
        while self.step < tc.max_steps:
            batch = next(data)
            rng = micro_batch_rng(tc.seed, self.micro, acc.process_index)
            self.micro += 1
            with acc.accumulate(self.model):
                loss, logs = loss_fn(batch, rng)
                acc.backward(loss)
                if acc.sync_gradients and tc.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.model.parameters(), tc.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if not acc.sync_gradients:
                continue
            self.scheduler.step()
            if self.ema is not None:
                self.ema.step(acc.unwrap_model(self.model).parameters())
            self.step += 1
            bar.update(1)
            done = self.step == tc.max_steps
            if self.step % tc.log_every == 0 or done:
                self.log({"loss": loss, **logs, "lr": self.scheduler.get_last_lr()[0]})
                bar.set_postfix(loss=f"{self.last_logs['loss']:.4f}")
            if after_step is not None:
                after_step(self.step)
            if self.step % tc.save_every == 0 or done:
                self.save()
        bar.close()
        return self.step

    def log(self, logs: dict[str, Any], reduce: bool = True) -> dict[str, float]:
        """Log scalars (tensors averaged over processes when `reduce`) at the current step."""
        names = list(logs)
        values = torch.stack([torch.as_tensor(v).detach().float().reshape(()).to(self.accelerator.device)
                              for v in logs.values()])
        if reduce:
            values = self.accelerator.reduce(values, "mean")
        self.last_logs = dict(zip(names, values.tolist()))
        self.accelerator.log(self.last_logs, step=self.step)
        return self.last_logs

    # ---- the end -----------------------------------------------------------------------------
    def export(self, folder: str, write: Callable[[Path], None]) -> Path:
        """Main process: write(tmp) fills a temporary folder that then replaces output_dir/<folder>."""
        final = self.out / folder
        if self.accelerator.is_main_process:
            tmp = self.out / f".tmp-{folder}"
            shutil.rmtree(tmp, ignore_errors=True)
            write(tmp)
            old = self.out / f".old-{folder}"
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained weights (gathered under ZeRO-3: every process must call this); with
        tc.write_param_checksum each process writes their checksum (tests that ranks agree)."""
        state = self.accelerator.get_state_dict(self.model)
        if self.tc.write_param_checksum and state:
            path = self.out / f"param_checksum_rank{self.accelerator.process_index}.txt"
            path.write_text(param_checksum(state) + "\n")
        return state

    def finish(self) -> None:
        """Drop the prepared objects and tear the process group down."""
        self.model = self.optimizer = self.loader = self.ema = None
        self.accelerator.free_memory()
        shutdown(self.accelerator)


def guard_deepspeed_files(folder: Path) -> None:
    """DeepSpeed reads its files with torch.load(weights_only=False): first check that each holds
    only tensors and plain data (weights_only=True, with DeepSpeed's own config types allowed)."""
    from torch.serialization import safe_globals

    allowed = _deepspeed_safe_types()
    for file in sorted(folder.rglob("*.pt")):
        try:
            with safe_globals(allowed):
                torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"refusing {file}: it holds more than tensors and plain data ({err})") from None


def _deepspeed_safe_types() -> list:
    types = []
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler, DynamicLossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        types += [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    except ImportError:
        pass
    return types
