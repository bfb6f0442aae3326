"""Generator training under `accelerate launch`: single process, DDP, or DeepSpeed ZeRO-2/3.

PyraTok generation stage: teacher-forced next-scale bit prediction on a precomputed token cache.
    python -m generator.train --config configs/generator/tiny.yaml [--set a.b=c ...] [--resume_from_checkpoint latest]
"""
from __future__ import annotations

import argparse
import shutil
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pyratok.accelerate_utils import make_accelerator, param_checksum, shutdown
from pyratok.checkpoints import find_checkpoint, list_checkpoints, step_of
from pyratok.config import flat_dict, load_config, save_config

from .config import GeneratorTrainConfig
from .model import PyraTokGenerator
from .objective import generator_loss
from .token_cache import TokenCacheDataset


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML/JSON GeneratorTrainConfig (defaults if omitted)")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="overrides, e.g. model.width=64")
    parser.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    return parser.parse_args(argv)


def build_model(cfg: GeneratorTrainConfig, dataset: TokenCacheDataset) -> PyraTokGenerator:
    m = cfg.model
    if (m.num_bits, m.num_levels) != (dataset.num_bits, dataset.num_levels):
        raise ValueError(
            f"model (num_bits={m.num_bits}, num_levels={m.num_levels}) does not match the token cache "
            f"(num_bits={dataset.num_bits}, num_levels={dataset.num_levels}) in {cfg.token_cache_dir}"
        )
    with torch.random.fork_rng(devices=[]):  # same init on every rank; the global RNG is left as it was
        torch.manual_seed(cfg.seed)
        model = PyraTokGenerator.from_generator_config(m)
    if m.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def save_checkpoint(accelerator: Accelerator, cfg: GeneratorTrainConfig, step: int) -> None:
    """Every rank writes its part (DeepSpeed needs all); the main rank prunes old checkpoints."""
    accelerator.save_state(str(Path(cfg.output_dir) / "checkpoints" / f"checkpoint-{step}"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and cfg.checkpoints_total_limit:
        for old in list_checkpoints(cfg.output_dir)[: -cfg.checkpoints_total_limit]:
            shutil.rmtree(old, ignore_errors=True)


def export_model(accelerator: Accelerator, cfg: GeneratorTrainConfig, model) -> None:
    """save_pretrained of the trained weights to output_dir/generator (ZeRO-3: gathered first)."""
    state_dict = accelerator.get_state_dict(model)  # collective under ZeRO-3: every rank calls it
    if cfg.write_param_checksum and state_dict:
        path = Path(cfg.output_dir) / f"param_checksum_rank{accelerator.process_index}.txt"
        path.write_text(param_checksum(state_dict) + "\n")
    if accelerator.is_main_process:
        export = PyraTokGenerator.from_config(accelerator.unwrap_model(model).config)
        export.load_state_dict({k: v.float() for k, v in state_dict.items()})
        export.save_pretrained(str(Path(cfg.output_dir) / "generator"))
    accelerator.wait_for_everyone()


def lr_factor(cfg: GeneratorTrainConfig, step: int) -> float:
    """Multiplier of cfg.lr for optimizer step `step` (0-based): linear warmup, constant, then an optional
    linear anneal to 0 over the last `decay_steps` steps. A resumed run may raise max_steps and add a decay."""
    warmup = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    if cfg.decay_steps == 0:
        return warmup
    return warmup * min(1.0, max(0.0, (cfg.max_steps - step) / cfg.decay_steps))


def train(cfg: GeneratorTrainConfig, resume: str | None = None) -> tuple[Accelerator, int]:
    """Run the training loop and export; returns the accelerator (references to models dropped) and the last step."""
    accelerator = make_accelerator(cfg.output_dir, cfg.mixed_precision,
                                   gradient_accumulation_steps=cfg.gradient_accumulation_steps, data_seed=cfg.seed)
    dataset = TokenCacheDataset(cfg.token_cache_dir)
    quantizer = dataset.load_quantizer(accelerator.device)
    model = build_model(cfg, dataset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, cfg))
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, collate_fn=dataset.collate,
                        num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed))
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.deepspeed_config.get("gradient_clipping") == "auto":
        plugin.deepspeed_config["gradient_clipping"] = cfg.max_grad_norm  # DeepSpeed clips; ours is skipped
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)  # stepped once per optimizer step, by us
    if accelerator.is_main_process:
        save_config(cfg, Path(cfg.output_dir) / "train_config.yaml")
    accelerator.init_trackers("generator", config=flat_dict(cfg))

    step = 0
    checkpoint = find_checkpoint(cfg.output_dir, resume)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        step = step_of(checkpoint)
        accelerator.print(f"resumed from {checkpoint} at step {step}")
    n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    accelerator.print(f"generator: {n_params / 1e6:.2f}M params, {len(dataset)} cached pyramids, "
                      f"{accelerator.num_processes} process(es), {accelerator.distributed_type}")

    batches_per_epoch = len(loader)
    if batches_per_epoch == 0:
        raise ValueError(f"token cache {cfg.token_cache_dir} gives no batches (size {len(dataset)})")
    micro = step * cfg.gradient_accumulation_steps  # micro-batches consumed so far
    epoch, skip = divmod(micro, batches_per_epoch)
    bar = tqdm(total=cfg.max_steps, initial=step, desc="generator", disable=not accelerator.is_local_main_process)
    while step < cfg.max_steps:
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        for batch in batches:
            # per micro-batch and rank: text dropout and bit flips replay exactly after a resume
            rng = torch.Generator().manual_seed(cfg.seed * 1_000_000_007 + micro * 1024 + accelerator.process_index)
            micro += 1
            with accelerator.accumulate(model):
                loss, stats = generator_loss(model, quantizer, batch, rng, cfg.cfg_dropout, cfg.self_correction_prob)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                names = ["loss", *stats]
                values = accelerator.reduce(torch.stack([loss.detach().float(), *stats.values()]).float(), "mean")
                logs = dict(zip(names, values.tolist())) | {"lr": scheduler.get_last_lr()[0]}
                accelerator.log(logs, step=step)
                bar.set_postfix(loss=f"{logs['loss']:.4f}", bit_acc=f"{logs['bit_acc']:.3f}")
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                save_checkpoint(accelerator, cfg, step)
            if step >= cfg.max_steps:
                break
        epoch += 1
    bar.close()
    export_model(accelerator, cfg, model)
    accelerator.free_memory()  # the accelerator lets go of model / optimizer / loader; ours go on return
    return accelerator, step


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(GeneratorTrainConfig, args.config, args.set)
    accelerator, _ = train(cfg, args.resume_from_checkpoint)
    shutdown(accelerator)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
