"""Latent refiner training (`generator.refiner`) on a token cache and the generator trained on it.

    python -m generator.train_refiner --config configs/refiner/conv128.yaml \\
        --set data.token_cache_dir=CACHE data.generator_dir=GEN/generator train.output_dir=OUT

A "regress" refiner: the frozen generator draws each batch's finer levels afresh (one seed per clip from the
micro-batch generator, so a resumed run equals an uninterrupted one). A "flow" refiner (model.mode=flow) learns
from the clips' own levels and needs no generator (data.generator_dir, when given, only makes it read the
caption as that generator does: token states, phrase vectors or both; recorded in its config). The refiner is
exported to OUT/refiner. `train.init_from=DIR` starts a new stage from a saved refiner (fresh optimizer, step
0), e.g. configs/refiner/flow128_unet_more.yaml.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pyratok.checkpoints import load_saved_weights
from pyratok.config import load_config
from pyratok.text_encoder import text_reading
from pyratok.training import TrainConfig
from pyratok.training.loop import Trainer

from .buckets import token_cache_loader
from .model import PyraTokGenerator
from .refiner import MODES, TARGETS, LatentRefiner, flow_loss, refiner_loss
from .token_cache import TokenCacheDataset
from .train import run_parser


@dataclass
class RefinerConfig:
    """`LatentRefiner`'s arguments; latent_channels and text_dim are read from the cache and the generator."""

    width: int = 64
    depth: int = 4  # blocks (per resolution and direction with scales > 1)
    scales: int = 1  # resolutions of the body: 1 a flat stack of blocks; S > 1 a U-Net (generator.refiner)
    text_heads: int = 4
    keep_levels: int = -1  # the clip's levels kept (flow: read); -1: all but the finest
    mode: str = "regress"  # or "flow": draws the levels after keep_levels (generator.refiner)
    text_dropout: float = 0.1  # flow: share of clips trained with the null text (classifier-free guidance)
    sigma_location: float = 0.0  # flow: training sigmas are sigmoid(N(this, 1)); > 0 weighs where shapes form
    sample_steps: int = 16  # flow: Euler steps of a draw
    guidance_scale: float = 3.0  # flow: classifier-free guidance of a draw
    target: str = "z_hat"  # what it learns: the clips' z_hat, or "latent" (their unquantized latents)
    # how it reads the caption; None: as data.generator_dir's generator does (its token states without one).
    # phrase_tokens: one vector per phrase after the token states; word_tokens False: the phrase vectors alone
    phrase_tokens: bool | None = None
    word_tokens: bool | None = None

    def __post_init__(self):
        if self.scales < 1:
            raise ValueError(f"model.scales must be >= 1, got {self.scales}")
        if self.keep_levels < -1:
            raise ValueError(f"model.keep_levels must be >= 0, or -1 for all but the finest, got {self.keep_levels}")
        if self.mode not in MODES:
            raise ValueError(f"model.mode must be one of {MODES}, got {self.mode!r}")
        if self.target not in TARGETS:
            raise ValueError(f"model.target must be one of {TARGETS}, got {self.target!r}")
        if self.word_tokens is False and self.phrase_tokens is not True:
            raise ValueError(f"model.word_tokens=False leaves the refiner no text: it needs model.phrase_tokens=True, "
                             f"got {self.phrase_tokens}")
        if not 0.0 <= self.text_dropout < 1.0:
            raise ValueError(f"model.text_dropout must be in [0, 1), got {self.text_dropout}")
        if not math.isfinite(self.sigma_location):
            raise ValueError(f"model.sigma_location must be a finite number, got {self.sigma_location}")
        if self.sample_steps < 1 or not (math.isfinite(self.guidance_scale) and self.guidance_scale >= 0):
            raise ValueError(f"model.sample_steps must be >= 1 and model.guidance_scale a finite number >= 0, got "
                             f"{self.sample_steps} and {self.guidance_scale}")


@dataclass
class RefinerDataConfig:
    token_cache_dir: str = "runs/token_cache"  # generator.build_cache, with captions
    generator_dir: str | None = "runs/generator/generator"  # the generator trained on that cache; flow: optional
    generator_variant: str | None = None  # e.g. "ema"; None: the raw weights
    guidance_scale: float = 3.0  # the generator's draws, as the pipeline samples

    def __post_init__(self):
        if not math.isfinite(self.guidance_scale) or self.guidance_scale <= 0:
            raise ValueError(f"data.guidance_scale must be a finite number > 0, got {self.guidance_scale}")


@dataclass
class RefinerTrainLoop(TrainConfig):
    """The shared `train` knobs (pyratok.training.TrainConfig) plus the refiner's own."""

    output_dir: str = "runs/refiner"
    init_from: str | None = None  # a saved refiner folder to start from (a new stage: fresh optimizer, step 0)


@dataclass
class RefinerTrainConfig:
    model: RefinerConfig = field(default_factory=RefinerConfig)
    data: RefinerDataConfig = field(default_factory=RefinerDataConfig)
    train: RefinerTrainLoop = field(default_factory=RefinerTrainLoop)


def caption_reading(m: RefinerConfig, generator) -> dict[str, bool]:
    """How the refiner reads the caption (`text_reading` keywords): model.phrase_tokens / model.word_tokens where
    set, else as the generator does (its token states without one). Never no text: the config refuses
    word_tokens=False without phrase_tokens=True, and a generator's config refuses it too."""
    reading = text_reading({} if generator is None else generator.config)
    for key, value in (("phrases", m.phrase_tokens), ("words", m.word_tokens)):
        if value is not None:
            reading[key] = bool(value)
    return reading


def build_refiner(cfg: RefinerTrainConfig, dataset: TokenCacheDataset, quantizer, generator) -> LatentRefiner:
    if not dataset.has_text:
        raise ValueError(f"token cache {cfg.data.token_cache_dir} has no captions: the refiner reads the text")
    if generator is not None and generator.config.num_levels != dataset.num_levels:
        raise ValueError(f"the generator has {generator.config.num_levels} levels, the token cache "
                         f"{cfg.data.token_cache_dir} {dataset.num_levels}")
    m = cfg.model
    if m.target == "latent" and not dataset.has_latents:
        raise ValueError(f"model.target=latent learns the clips' unquantized latents, but the token cache "
                         f"{cfg.data.token_cache_dir} has none: build it with `generator.build_cache --latents`")
    keep = dataset.num_levels - 1 if m.keep_levels == -1 else m.keep_levels
    if keep >= dataset.num_levels:
        raise ValueError(f"model.keep_levels={keep} must leave a level to refine: the cache has {dataset.num_levels}")
    text_dim = dataset[0]["text_states"].shape[-1] if generator is None else generator.config.text_dim
    with torch.random.fork_rng(devices=[]):  # same init on every rank
        torch.manual_seed(cfg.train.seed)
        refiner = LatentRefiner(latent_channels=quantizer.config.latent_channels, width=m.width, depth=m.depth,
                                scales=m.scales, text_dim=text_dim, text_heads=m.text_heads, keep_levels=keep,
                                mode=m.mode, sample_steps=m.sample_steps, guidance_scale=m.guidance_scale,
                                phrase_tokens=dataset.phrase_tokens, word_tokens=dataset.word_tokens, target=m.target)
    if cfg.train.init_from:  # a resumed run then loads its own checkpoint over these
        load_saved_weights(refiner, cfg.train.init_from)
    return refiner


def train(cfg: RefinerTrainConfig, resume: str | None = None) -> tuple[Trainer, int]:
    """Run the training loop and export OUT/refiner; returns the trainer (call `finish`) and the last step."""
    tc = cfg.train
    trainer = Trainer(tc, "refiner", cfg)
    acc = trainer.accelerator
    flow = cfg.model.mode == "flow"
    if cfg.data.generator_dir is None and not flow:
        raise ValueError("a regress refiner learns from the generator's draws: set data.generator_dir")
    generator = None
    if cfg.data.generator_dir is not None:
        generator = PyraTokGenerator.from_pretrained(cfg.data.generator_dir, variant=cfg.data.generator_variant)
        generator = generator.to(acc.device).eval().requires_grad_(False)
    reading = caption_reading(cfg.model, generator)
    dataset = TokenCacheDataset(cfg.data.token_cache_dir, phrase_tokens=reading["phrases"],
                                word_tokens=reading["words"])
    quantizer = dataset.load_quantizer(acc.device)
    refiner = build_refiner(cfg, dataset, quantizer, generator)
    loader = token_cache_loader(dataset, tc.batch_size, tc.seed, tc.num_workers, acc.state.deepspeed_plugin)
    model = trainer.prepare(refiner, loader)
    trainer.resume(resume)
    acc.print(f"refiner: {sum(p.numel() for p in refiner.parameters()) / 1e6:.2f}M params, keeps "
              f"{refiner.config.keep_levels} of {dataset.num_levels} levels, {len(dataset)} cached pyramids")

    def loss_fn(batch, rng):
        if flow:
            return flow_loss(model, refiner.config, quantizer, batch, rng, cfg.model.text_dropout,
                             cfg.model.sigma_location)
        return refiner_loss(model, generator, quantizer, batch, rng, cfg.data.guidance_scale)

    step = trainer.fit(loss_fn)
    state_dict = trainer.full_state_dict()

    def write(folder: Path) -> None:
        export = LatentRefiner.from_config(acc.unwrap_model(model).config)
        export.load_state_dict({k: v.float() for k, v in state_dict.items()})
        export.save_pretrained(str(folder))

    trainer.export("refiner", write)
    return trainer, step


def main(argv=None) -> int:
    args = run_parser(__doc__, "RefinerTrainConfig", "data.token_cache_dir=CACHE train.max_steps=50").parse_args(argv)
    trainer, _ = train(load_config(RefinerTrainConfig, args.config, args.set), args.resume_from_checkpoint)
    trainer.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
