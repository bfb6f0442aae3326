"""Train the PyraTok tokenizer: `python -m pyratok.train --config configs/tokenizer/tiny.yaml`.

Implements the staged training of PyraTok §4 under accelerate (single process, DDP, or
DeepSpeed): an optional continuous-VAE warm-up, then LaPQ with all losses and text dropout.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .accelerate_utils import make_accelerator, param_checksum, shutdown
from .checkpoints import find_checkpoint, load_pretrained_wan, load_tokenizer_weights, step_of
from .config import cli_overrides, flat_dict, load_config, save_config
from .data.mix import DataConfig, build_dataset, collate_videos
from .objective import LossWeights, TokenizerObjective
from .text_encoder import TextEncoder
from .tokenizer import PyraTokTokenizer, TokenizerConfig
from .visualize import plot_utilization, save_recon_grid


@dataclass
class TrainLoopConfig:
    output_dir: str = "runs/tokenizer"
    steps: int = 1000
    vae_steps: int = 0  # continuous-VAE warm-up steps before LaPQ (0: start quantized)
    vae_sample: bool = False  # warm-up decodes a posterior sample (True) or the posterior mean (False)
    batch_size: int = 4
    lr: float = 3e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 50
    text_dropout: float = 0.1
    freeze_encoder: bool = False
    # with freeze_encoder: LaPQ on a frozen parent VAE (its own decoder reconstructs z_hat)
    freeze_decoder: bool = False
    # train the decoder alone (post_quant_conv + decoder): the tokens stay bit-for-bit those of the
    # starting model, so a generator trained on them stays valid (a decoder fine-tuning stage)
    decoder_only: bool = False
    log_every: int = 10
    image_every: int = 200
    save_every: int = 250
    seed: int = 0
    num_workers: int = 0
    mixed_precision: str = "no"
    pretrained_vae: str | None = None  # local folder with AutoencoderKLWan weights (Wan 2.1)
    text_encoder: str | None = None  # local folder; None = the installed MiniLM
    init_from: str | None = None  # a saved tokenizer folder to start from (a new stage, fresh optimizer)
    grow_from_init: bool = False  # init_from may be smaller (e.g. fewer bits): see load_tokenizer_weights
    write_param_checksum: bool = False  # each rank writes param_checksum_rank{i}.txt (tests DDP sync)


@dataclass
class TokenizerTrainConfig:
    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    loss: LossWeights = field(default_factory=LossWeights)


def lr_lambda(cfg: TrainLoopConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def batches(loader, accelerator: Accelerator, skip: int):
    """Endless iterator over epochs; the first epoch skips `skip` batches (resume)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        it = accelerator.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        yield from it
        epoch += 1


def train(cfg: TokenizerTrainConfig, resume: str | None = None) -> Path:
    tc = cfg.train
    accelerator = make_accelerator(tc.output_dir, tc.mixed_precision, find_unused_parameters=True)
    set_seed(tc.seed)  # model initialisation is identical on every rank
    out = Path(tc.output_dir)
    tokenizer = PyraTokTokenizer.from_config_dataclass(cfg.model)
    if tc.pretrained_vae:
        load_pretrained_wan(tokenizer, tc.pretrained_vae)
    if tc.init_from:
        load_tokenizer_weights(tokenizer, tc.init_from, grow=tc.grow_from_init)
    if tc.freeze_encoder:
        tokenizer.backbone.encoder.requires_grad_(False)
        tokenizer.backbone.quant_conv.requires_grad_(False)
    if tc.freeze_decoder:
        tokenizer.backbone.post_quant_conv.requires_grad_(False)
        tokenizer.backbone.decoder.requires_grad_(False)
    if tc.decoder_only:
        tokenizer.requires_grad_(False)
        tokenizer.backbone.post_quant_conv.requires_grad_(True)
        tokenizer.backbone.decoder.requires_grad_(True)
    objective = TokenizerObjective(tokenizer, cfg.loss)
    text_encoder = TextEncoder.from_pretrained(tc.text_encoder, device=accelerator.device)

    dataset = build_dataset(cfg.data)
    loader = DataLoader(
        dataset, batch_size=tc.batch_size, shuffle=True, drop_last=True, num_workers=tc.num_workers,
        collate_fn=collate_videos, generator=torch.Generator().manual_seed(tc.seed),
    )
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc))
    objective, optimizer, loader, scheduler = accelerator.prepare(objective, optimizer, loader, scheduler)

    start = 0
    ckpt = find_checkpoint(out, resume)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        start = step_of(ckpt)
        accelerator.print(f"resumed from {ckpt} at step {start}")
    if accelerator.is_main_process:
        save_config(cfg, out / "config.yaml")
    accelerator.init_trackers("tokenizer", config=flat_dict(cfg))

    rng = torch.Generator().manual_seed(tc.seed * 1000 + accelerator.process_index)
    data = batches(loader, accelerator, start % max(1, len(loader)))
    history: dict[int, dict[str, float]] = {}
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, disable=not accelerator.is_main_process)
    for step in bar:
        batch = next(data)
        video = batch["video"].to(accelerator.device)
        text = text_encoder(batch["caption"])
        drop = (torch.rand(video.shape[0], generator=rng) < tc.text_dropout).to(video.device)
        with accelerator.accumulate(objective):
            terms, output = objective(
                video, text.hidden_states, text.attention_mask, text.pooled, drop,
                quantize=step >= tc.vae_steps, sample_posterior=tc.vae_sample,
            )
            accelerator.backward(terms["loss"])
            if accelerator.sync_gradients and tc.grad_clip:
                accelerator.clip_grad_norm_(params, tc.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            metrics = {k: float(v) for k, v in terms.items()}
            metrics["lr"] = scheduler.get_last_lr()[0]
            history[done] = metrics
            accelerator.log(metrics, step=done)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", psnr=f"{metrics['psnr']:.2f}")
        if accelerator.is_main_process and (done % tc.image_every == 0 or done == tc.steps):
            save_recon_grid(video, output.recon, out / "images" / f"recon_{done:06d}.png")
            if any(k.startswith("utilization/") for m in history.values() for k in m):
                plot_utilization(history, out / "images" / "utilization.png")
        if done % tc.save_every == 0 or done == tc.steps:
            accelerator.save_state(str(out / "checkpoints" / f"checkpoint-{done}"))

    accelerator.wait_for_everyone()
    trained = accelerator.unwrap_model(objective).tokenizer
    if tc.write_param_checksum:
        (out / f"param_checksum_rank{accelerator.process_index}.txt").write_text(param_checksum(trained.state_dict()))
    if accelerator.is_main_process:
        trained.save_pretrained(out / "tokenizer")
    del objective, optimizer, loader, text_encoder
    shutdown(accelerator)
    return out / "tokenizer"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/tokenizer/tiny.yaml")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="overrides, e.g. train.steps=100")
    parser.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--pretrained_vae", default=None, help="local folder of Wan 2.1 VAE weights")
    parser.add_argument("--output_dir", default=None)
    args = parser.parse_args(argv)
    overrides = cli_overrides(args, {"pretrained_vae": "train.pretrained_vae", "output_dir": "train.output_dir"})
    cfg = load_config(TokenizerTrainConfig, args.config, overrides)
    train(cfg, resume=args.resume_from_checkpoint)


if __name__ == "__main__":
    main()
