"""Generator training under `accelerate launch`: single process, DDP, or DeepSpeed ZeRO-2/3.

PyraTok generation stage: teacher-forced next-scale bit prediction on a precomputed token cache.
    python -m generator.train --config configs/generator/tiny.yaml [--set train.max_steps=50 ...] [--resume_from_checkpoint latest]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel

from pyratok.checkpoints import load_saved_weights
from pyratok.config import load_config
from pyratok.training.loop import Trainer, micro_batch_rng

from .buckets import token_cache_loader
from .config import GeneratorTrainConfig
from .model import PyraTokGenerator
from .objective import generator_loss
from .sequence_parallel import SequenceParallelGroups
from .token_cache import TokenCacheDataset

EMA_VARIANT = "ema"  # the EMA weights: generator/diffusion_pytorch_model.ema.safetensors


def run_parser(description: str, config_name: str, example: str) -> argparse.ArgumentParser:
    """--config (a YAML/JSON `config_name`), --set KEY=VALUE overrides, --resume_from_checkpoint: the command
    line of the trainers on a token cache (this one and `generator.train_refiner`)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help=f"YAML/JSON {config_name} (defaults if omitted)")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help=f"overrides, e.g. {example}")
    parser.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return run_parser(__doc__, "GeneratorTrainConfig", "model.width=64 train.max_steps=50").parse_args(argv)


def build_model(cfg: GeneratorTrainConfig, dataset: TokenCacheDataset) -> PyraTokGenerator:
    m = cfg.model
    if (m.num_bits, m.num_levels) != (dataset.num_bits, dataset.num_levels):
        raise ValueError(
            f"model (num_bits={m.num_bits}, num_levels={m.num_levels}) does not match the token cache "
            f"(num_bits={dataset.num_bits}, num_levels={dataset.num_levels}) in {cfg.data.token_cache_dir}"
        )
    with torch.random.fork_rng(devices=[]):  # same init on every rank; the global RNG is left as it was
        torch.manual_seed(cfg.train.seed)
        model = PyraTokGenerator.from_generator_config(m)
    if cfg.train.init_from:  # the raw trained weights (not the EMA variant); a resumed run then loads its checkpoint
        load_saved_weights(model, cfg.train.init_from, grow=cfg.train.grow_from_init)
    if m.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def make_ema(trainer: Trainer, model: PyraTokGenerator) -> EMAModel | None:
    decay = trainer.tc.ema_decay
    if not decay:
        return None
    plugin = trainer.accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.zero_stage == 3:
        trainer.accelerator.print("ZeRO-3 partitions the weights: no EMA in this run")
        return None
    return EMAModel(model.parameters(), decay=decay, model_cls=PyraTokGenerator, model_config=model.config)


def export_model(trainer: Trainer, model) -> Path:
    """save_pretrained of the trained weights to output_dir/generator (ZeRO-3: gathered first), with
    the EMA weights beside them as the "ema" variant."""
    state_dict = trainer.full_state_dict()  # collective under ZeRO-3: every rank calls it
    config = trainer.accelerator.unwrap_model(model).config

    def write(folder: Path) -> None:
        export = PyraTokGenerator.from_config(config)
        export.load_state_dict({k: v.float() for k, v in state_dict.items()})
        export.save_pretrained(str(folder))
        if trainer.ema is not None:
            trainer.ema.copy_to(export.parameters())
            export.save_pretrained(str(folder), variant=EMA_VARIANT)

    return trainer.export("generator", write)


def train(cfg: GeneratorTrainConfig, resume: str | None = None) -> tuple[Trainer, int]:
    """Run the training loop and export; returns the trainer (call `finish`) and the last step."""
    tc = cfg.train
    trainer = Trainer(tc, "generator", cfg)
    acc = trainer.accelerator
    dataset = TokenCacheDataset(cfg.data.token_cache_dir, phrase_tokens=cfg.model.phrase_tokens,
                                word_tokens=cfg.model.word_tokens)
    if tc.contrast_weight > 0 and cfg.model.phrase_tokens:
        raise ValueError(f"train.contrast_weight={tc.contrast_weight} with model.phrase_tokens: the swapped captions "
                         "have no phrase vectors in the cache; use one or the other")
    if tc.contrast_weight > 0 and not dataset.has_negatives:
        raise ValueError(f"train.contrast_weight={tc.contrast_weight} needs swapped captions, but the token cache "
                         f"{cfg.data.token_cache_dir} has none: build it with --contrast-words")
    quantizer = dataset.load_quantizer(acc.device)
    model = build_model(cfg, dataset)
    loader = token_cache_loader(dataset, tc.batch_size, tc.seed, tc.num_workers, acc.state.deepspeed_plugin)
    sp = None  # sequence parallelism: a group of ranks splits each clip (generator.sequence_parallel)
    if cfg.model.sequence_parallel_size > 1:
        sp = SequenceParallelGroups(acc.num_processes, acc.process_index, cfg.model.sequence_parallel_size)
        sp.enable(model)
    model = trainer.prepare(model, loader, ema=make_ema(trainer, model))
    trainer.resume(resume)
    n_params = sum(p.numel() for p in acc.unwrap_model(model).parameters())
    acc.print(f"generator: {n_params / 1e6:.2f}M params, {len(dataset)} cached pyramids, "
              f"{acc.num_processes} process(es), {acc.distributed_type}")

    def loss_fn(batch, rng):
        if sp is not None:  # the group's batch, and the micro-batch generator of its data rank
            batch, rng = sp.share(batch), micro_batch_rng(tc.seed, trainer.micro - 1, sp.data_rank)
        loss, logs = generator_loss(model, quantizer, batch, rng, tc.text_dropout, tc.self_correction_prob,
                                    cfg.model.finest_passes, tc.contrast_weight, tc.contrast_tau,
                                    tc.finest_edge_share, tc.finest_flat_weight, cfg.model.finest_conv_passes)
        return (loss, logs) if sp is None else (loss * sp.loss_scale, {**logs, "loss": loss.detach()})

    step = trainer.fit(loss_fn)
    export_model(trainer, model)
    del model
    return trainer, step


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(GeneratorTrainConfig, args.config, args.set)
    trainer, _ = train(cfg, args.resume_from_checkpoint)
    trainer.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
