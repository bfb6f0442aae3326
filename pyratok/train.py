"""Train the PyraTok tokenizer: `python -m pyratok.train --config configs/tokenizer/tiny.yaml`.

Implements the staged training of PyraTok §4 under accelerate (single process, DDP, or
DeepSpeed): an optional continuous-VAE warm-up, then LaPQ with all losses and text dropout.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from .checkpoints import load_pretrained_wan, load_saved_weights
from .config import cli_overrides, load_config
from .data.mix import DataConfig, build_dataset, collate_videos
from .fit_quantizer import encode_clips, fit_quantizer
from .objective import LossWeights, TokenizerObjective
from .text_encoder import TextEncoder
from .tokenizer import PyraTokTokenizer, TokenizerConfig
from .training import TrainConfig
from .training.loop import Trainer
from .visualize import plot_utilization, save_recon_grid


@dataclass
class TokenizerTrainLoop(TrainConfig):
    """The shared `train` knobs (pyratok.training.TrainConfig) plus the tokenizer's own."""

    output_dir: str = "runs/tokenizer"
    betas: tuple[float, float] = (0.9, 0.99)
    lr_scheduler: str = "cosine_with_min_lr"  # warmup, then cosine down to 10% of lr at max_steps
    lr_scheduler_kwargs: dict = field(default_factory=lambda: {"min_lr_rate": 0.1})
    warmup_steps: int = 50
    save_every: int = 250
    vae_steps: int = 0  # continuous-VAE warm-up steps before LaPQ (0: start quantized)
    vae_sample: bool = False  # warm-up decodes a posterior sample (True) or the posterior mean (False)
    text_dropout: float = 0.1  # share of clips trained without their caption
    freeze_encoder: bool = False
    # with freeze_encoder: LaPQ on a frozen parent VAE (its own decoder reconstructs z_hat)
    freeze_decoder: bool = False
    # train the decoder alone (post_quant_conv + decoder): the tokens stay bit-for-bit those of the
    # starting model, so a generator trained on them stays valid (a decoder fine-tuning stage)
    decoder_only: bool = False
    # with decoder_only: each clip's finest-level bits are flipped at a rate drawn from U(0, finest_flip_max)
    # before decoding, so the decoder learns to draw clean content from the noisy finest bits a generator
    # samples (the target stays the clip itself)
    finest_flip_max: float = 0.0
    # with decoder_only: the share of steps that decode the clips' unquantized latent (the posterior mean)
    # instead of their z_hat, for a pipeline whose refiner draws that latent (`target: latent`); the decoder
    # then learns both inputs, and the tokens still stay those of the starting model
    decoder_latent_prob: float = 0.0
    image_every: int = 200
    pretrained_vae: str | None = None  # local folder with AutoencoderKLWan weights (Wan 2.1)
    text_encoder: str | None = None  # local folder; None = the installed MiniLM
    init_from: str | None = None  # a saved tokenizer folder to start from (a new stage, fresh optimizer)
    grow_from_init: bool = False  # init_from may be smaller (e.g. fewer bits): see load_saved_weights
    # with freeze_encoder: first fit LaPQ alone to the fixed latents of this many clips (pyratok.fit_quantizer),
    # ~20x cheaper a step than the end-to-end steps that follow
    quantizer_fit_steps: int = 0
    quantizer_fit_clips: int = 256
    quantizer_fit_lr: float = 0.002

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.text_dropout < 1.0:
            raise ValueError(f"train.text_dropout must be in [0, 1), got {self.text_dropout}")
        if not 0.0 <= self.finest_flip_max <= 0.5:
            raise ValueError(f"train.finest_flip_max must be in [0, 0.5], got {self.finest_flip_max}")
        if self.finest_flip_max and not self.decoder_only:
            raise ValueError(f"train.finest_flip_max={self.finest_flip_max} needs train.decoder_only: flipped bits "
                             "train the decoder, while the tokens stay those of the starting model")
        if not 0.0 <= self.decoder_latent_prob <= 1.0:
            raise ValueError(f"train.decoder_latent_prob must be in [0, 1], got {self.decoder_latent_prob}")
        if self.decoder_latent_prob and not self.decoder_only:
            raise ValueError(f"train.decoder_latent_prob={self.decoder_latent_prob} needs train.decoder_only: "
                             "only a decoder stage may decode the latent in place of the tokens")
        if self.quantizer_fit_steps < 0:
            raise ValueError(f"train.quantizer_fit_steps must be >= 0, got {self.quantizer_fit_steps}")
        if self.quantizer_fit_steps and not self.freeze_encoder:
            raise ValueError(f"train.quantizer_fit_steps={self.quantizer_fit_steps} needs train.freeze_encoder: "
                             "the latents it fits must stay the encoder's")


@dataclass
class TokenizerTrainConfig:
    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TokenizerTrainLoop = field(default_factory=TokenizerTrainLoop)
    loss: LossWeights = field(default_factory=LossWeights)

    RENAMED_KEYS: ClassVar[dict] = {"train.steps": "train.max_steps", "train.grad_clip": "train.max_grad_norm"}


def build_objective(cfg: TokenizerTrainConfig) -> TokenizerObjective:
    tc = cfg.train
    tokenizer = PyraTokTokenizer.from_config_dataclass(cfg.model)
    if tc.pretrained_vae:
        load_pretrained_wan(tokenizer, tc.pretrained_vae)
    if tc.init_from:
        load_saved_weights(tokenizer, tc.init_from, grow=tc.grow_from_init)
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
        if tokenizer.quantizer.whitening is not None:  # its running statistics would move the tokens
            tokenizer.quantizer.whitening.frozen = True
    return TokenizerObjective(tokenizer, cfg.loss)


def fit_first(tokenizer: PyraTokTokenizer, cfg: TokenizerTrainConfig) -> None:
    """The quantizer-only first stage: LaPQ fitted to the frozen encoder's latents of the training clips."""
    tc = cfg.train
    z, taps, _ = encode_clips(tokenizer, build_dataset(cfg.data), tc.quantizer_fit_clips)
    fit_quantizer(tokenizer.quantizer, z, taps, tc.quantizer_fit_steps, tc.quantizer_fit_lr, tc.batch_size,
                  seed=tc.seed, weights=cfg.loss)
    tokenizer.quantizer.train()


def finest_flips(tokenizer: PyraTokTokenizer, video: torch.Tensor, max_rate: float,
                 rng: torch.Generator) -> torch.Tensor:
    """(b, t, h, w, k) bool: which finest-level bits of each clip of `video` (b, 3, T, H, W) to flip, each clip
    at its own rate r ~ U(0, max_rate), each bit independently (a clip at r near 0 stays nearly clean)."""
    b = video.shape[0]
    grid = tokenizer.token_grids(*video.shape[2:])[-1]  # (t, h, w) of the finest level
    rate = torch.rand(b, generator=rng) * max_rate  # (b,)
    u = torch.rand(b, *grid, tokenizer.quantizer.config.num_bits, generator=rng)  # (b, t, h, w, k)
    return u < rate.view(b, 1, 1, 1, 1)


def latent_step_draw(seed: int, step: int) -> float:
    """The uniform that decides whether optimizer step `step` decodes the latent (train.decoder_latent_prob): one
    draw per step from the seed alone, so every rank and micro-batch of a step decodes the same input (their
    logged terms must match to be reduced) and a resumed run draws what an uninterrupted one did."""
    return float(torch.rand((), generator=torch.Generator().manual_seed(seed * 1_000_003 + step)))


def train(cfg: TokenizerTrainConfig, resume: str | None = None) -> Path:
    tc = cfg.train
    trainer = Trainer(tc, "tokenizer", cfg, find_unused_parameters=True)
    set_seed(tc.seed)  # the same initial weights on every rank; a resume restores the streams after this
    objective = build_objective(cfg)
    if tc.quantizer_fit_steps:  # deterministic from the seed; a resume then loads its checkpoint over it
        fit_first(objective.tokenizer, cfg)
    text_encoder = TextEncoder.from_pretrained(tc.text_encoder, device=trainer.accelerator.device)
    loader = DataLoader(build_dataset(cfg.data), batch_size=tc.batch_size, shuffle=True, drop_last=True,
                        num_workers=tc.num_workers, collate_fn=collate_videos,
                        generator=torch.Generator().manual_seed(tc.seed))
    model = trainer.prepare(objective, loader)
    trainer.resume(resume)
    out, device = trainer.out, trainer.accelerator.device
    history: dict[int, dict[str, float]] = {}
    last: dict = {}

    def loss_fn(batch, rng):
        video = batch["video"].to(device)
        text = text_encoder(batch["caption"])
        drop = (torch.rand(video.shape[0], generator=rng) < tc.text_dropout).to(device)
        latent_step = bool(tc.decoder_latent_prob and latent_step_draw(tc.seed, trainer.step) < tc.decoder_latent_prob)
        quantize = trainer.step >= tc.vae_steps and not latent_step
        flip = finest_flips(objective.tokenizer, video, tc.finest_flip_max, rng) if tc.finest_flip_max and quantize else None
        terms, output = model(video, text.hidden_states, text.attention_mask, text.pooled, drop,
                              quantize=quantize, sample_posterior=tc.vae_sample and not latent_step,
                              flip_finest=None if flip is None else flip.to(device))
        last.update(video=video, recon=output.recon)
        return terms["loss"], {k: v for k, v in terms.items() if k != "loss"}

    def after_step(step: int) -> None:
        if step % tc.log_every == 0 or step == tc.max_steps:
            history[step] = dict(trainer.last_logs)
        if trainer.accelerator.is_main_process and (step % tc.image_every == 0 or step == tc.max_steps):
            save_recon_grid(last["video"], last["recon"], out / "images" / f"recon_{step:06d}.png")
            if any(k.startswith("utilization/") for m in history.values() for k in m):
                plot_utilization(history, out / "images" / "utilization.png")

    trainer.fit(loss_fn, after_step)
    trainer.full_state_dict()  # (the per-rank checksums, when asked)
    trainer.export("tokenizer", trainer.accelerator.unwrap_model(model).tokenizer.save_pretrained)
    del model, objective, loader, text_encoder, last
    trainer.finish()
    return out / "tokenizer"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/tokenizer/tiny.yaml")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="overrides, e.g. train.max_steps=100")
    parser.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--pretrained_vae", default=None, help="local folder of Wan 2.1 VAE weights")
    parser.add_argument("--output_dir", default=None)
    args = parser.parse_args(argv)
    overrides = cli_overrides(args, {"pretrained_vae": "train.pretrained_vae", "output_dir": "train.output_dir"})
    cfg = load_config(TokenizerTrainConfig, args.config, overrides)
    train(cfg, resume=args.resume_from_checkpoint)


if __name__ == "__main__":
    main()
