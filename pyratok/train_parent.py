"""Train the parent VAE: `python -m pyratok.train_parent --config configs/parent/tiny.yaml`.

Stage 1 of PyraTok's setting (DESIGN.md "Tokenizer losses"): a continuous diffusers `AutoencoderKLWan`
trained image-video jointly on natural data, the local stand-in for pretrained Wan 2.1 weights.
Each step sees a batch of still photos (1-frame videos) and a batch of clips (real, pans, Shapes).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed
from diffusers import AutoencoderKLWan
from torch.utils.data import DataLoader, Dataset

from .backbone import BackboneConfig, build_wan, decode_unclamped
from .checkpoints import save_half
from .config import cli_overrides, load_config
from .data.mix import MixedDataset, collate_videos
from .data.natural import StillImageDataset, clip_paths, load_rgb, packaged_image_paths
from .data.real_clips import ImagePanDataset, RealClipDataset
from .data.shapes import ShapesDataset
from .data.video_io import read_video
from .losses import kl_loss, psnr, reconstruction_loss
from .parent_init import blur_init_
from .training import TrainConfig
from .training.loop import Trainer
from .visualize import save_recon_grid


@dataclass
class ParentDataConfig:
    image_size: int = 128
    images_per_clip: int = 6  # photos (1-frame videos) beside each clip of a batch
    clip_frames: int = 9
    clip_size: int = 64
    real_weight: float = 0.4  # crops of the training clip (bikes)
    pans_weight: float = 0.45  # pans and zooms over the training photos and bikes' frames
    shapes_weight: float = 0.15  # Shapes, a minority
    length: int = 1_000_000
    seed: int = 0


@dataclass
class ParentTrainConfig(TrainConfig):
    output_dir: str = "runs/parent-vae"
    max_steps: int = 3000
    batch_size: int = 1  # clips per micro-batch (each with images_per_clip photos)
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.99)
    lr_scheduler: str = "cosine_with_min_lr"
    lr_scheduler_kwargs: dict = field(default_factory=lambda: {"min_lr_rate": 0.1})
    warmup_steps: int = 30
    save_every: int = 50
    log_every: int = 20
    ssim: float = 0.2  # weight of (1 - SSIM)
    mse: float = 1.0  # MSE beside L1: large early errors pull harder (a random Wan starts from flat frames)
    kl: float = 1e-6
    # decode a posterior sample (a VAE) or the posterior mean (an autoencoder whose KL only bounds the
    # latents): a tiny model on a CPU budget learns faster from the mean, as the tokenizer's warm-up did
    sample_posterior: bool = False
    image_every: int = 100
    init_from: str | None = None  # a saved AutoencoderKLWan folder to continue from (fresh optimizer)
    # "blur": start as a box-blur codec at the VAE's compression (pyratok.parent_init); "random": diffusers' init
    init: str = "blur"
    stat_batches: int = 16  # clips for the exported latents_mean / latents_std

    def __post_init__(self):
        super().__post_init__()
        if self.init not in ("blur", "random"):
            raise ValueError(f"train.init must be 'blur' or 'random', got {self.init!r}")


@dataclass
class ParentConfig:
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(
        base_dim=32, z_dim=16, dim_mult=[1, 2, 2], temperal_downsample=[True, True], patch_size=2))
    data: ParentDataConfig = field(default_factory=ParentDataConfig)
    train: ParentTrainConfig = field(default_factory=ParentTrainConfig)


class PhotosAndClip(Dataset):
    """Item i: `per_clip` photo crops (k, 3, 1, H, W) and one clip (3, T, h, w): one image-video joint sample."""

    def __init__(self, photos: Dataset, clips: Dataset, per_clip: int):
        if per_clip < 0:
            raise ValueError(f"images_per_clip must be >= 0, got {per_clip}")
        self.photos, self.clips, self.per_clip = photos, clips, per_clip
        self.length = min(len(clips), len(photos) // max(1, per_clip))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        k = self.per_clip
        photos = [self.photos[i * k + j]["video"] for j in range(k)]
        return {"photos": torch.stack(photos) if photos else None, "clip": self.clips[i]["video"]}


def collate_joint(batch: list[dict]) -> dict:
    """photos (b * k, 3, 1, H, W) and clips (b, 3, T, h, w)."""
    photos = [item["photos"] for item in batch if item["photos"] is not None]
    return {"photos": torch.cat(photos) if photos else None, "clips": torch.stack([item["clip"] for item in batch])}


def build_parent_data(cfg: ParentDataConfig) -> PhotosAndClip:
    """Photo crops and clips of the training split only (held-out photos and carphone never appear)."""
    photos = [load_rgb(p) for p in packaged_image_paths("train")]
    images = StillImageDataset(photos, size=cfg.image_size, length=cfg.length, seed=cfg.seed)
    stills = photos + [f for p in clip_paths("train") for f in read_video(p)[0][::25]]
    geometry = dict(num_frames=cfg.clip_frames, length=cfg.length, seed=cfg.seed)
    sources = {
        "real": RealClipDataset(clip_paths("train"), size=cfg.clip_size, caption="a real video", **geometry),
        "pans": ImagePanDataset(stills, size=cfg.clip_size, **geometry),
        "shapes": ShapesDataset(height=cfg.clip_size, width=cfg.clip_size, **geometry),
    }
    weights = {"real": cfg.real_weight, "pans": cfg.pans_weight, "shapes": cfg.shapes_weight}
    return PhotosAndClip(images, MixedDataset(sources, weights, cfg.length, cfg.seed), cfg.images_per_clip)


def vae_loss(vae: AutoencoderKLWan, video: torch.Tensor, tc: ParentTrainConfig, generator: torch.Generator):
    """L1 + mse * MSE + ssim * (1 - SSIM) + kl * KL of one batch (b, 3, T, H, W); returns (loss, logs, recon)."""
    posterior = vae.encode(video).latent_dist
    z = posterior.mean  # (b, c, t, h, w)
    if tc.sample_posterior:
        z = z + posterior.std * torch.randn(z.shape, generator=generator).to(z)
    recon = decode_unclamped(vae, z)
    rec = reconstruction_loss(recon, video, ssim_weight=tc.ssim, mse_weight=tc.mse)
    kl = kl_loss(posterior.mean, posterior.logvar)
    return rec["loss"] + tc.kl * kl, {"l1": rec["l1"], "kl": kl, "psnr": psnr(recon.detach().clamp(-1, 1), video)}, recon


@torch.no_grad()
def latent_statistics(vae: AutoencoderKLWan, batches) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior mean over `batches` (Wan's latents_mean / latents_std)."""
    zs = [vae.encode(b).latent_dist.mean.transpose(0, 1).flatten(1) for b in batches]  # each (c, b*t*h*w)
    z = torch.cat(zs, dim=1)
    return z.mean(1).tolist(), z.std(1).clamp_min(1e-4).tolist()


def write_parent(vae: AutoencoderKLWan, folder: Path, mean: list[float], std: list[float]) -> None:
    """A diffusers AutoencoderKLWan folder in fp16 safetensors, with the latent statistics in its config."""
    save_half(vae, folder, latents_mean=mean, latents_std=std)


def load_parent_weights(vae: AutoencoderKLWan, folder: str | Path) -> None:
    """Copy a saved AutoencoderKLWan's weights (any dtype) into `vae`; the architectures must match."""
    saved = AutoencoderKLWan.from_pretrained(folder, torch_dtype=torch.float32)
    vae.load_state_dict(saved.state_dict())  # raises naming the keys when the architectures differ


def train(cfg: ParentConfig, resume: str | None = None) -> Path:
    tc, dc = cfg.train, cfg.data
    trainer = Trainer(tc, "parent_vae", cfg)
    set_seed(tc.seed)
    data = build_parent_data(dc)
    loader = DataLoader(data, batch_size=tc.batch_size, shuffle=True, drop_last=True, num_workers=tc.num_workers,
                        collate_fn=collate_joint, generator=torch.Generator().manual_seed(tc.seed))
    vae = build_wan(cfg.backbone)
    if tc.init == "blur":
        blur_init_(vae)
    if tc.init_from:
        load_parent_weights(vae, tc.init_from)
    model = trainer.prepare(vae, loader)
    trainer.resume(resume)
    vae, device, last = trainer.accelerator.unwrap_model(model), trainer.accelerator.device, {}

    def loss_fn(batch, rng):
        total, logs = 0.0, {}
        for name in ("photos", "clips"):
            if batch[name] is None:
                continue
            video = batch[name].to(device)
            loss, terms, recon = vae_loss(vae, video, tc, rng)
            total = total + loss
            logs.update({f"{name}/{k}": v.detach() for k, v in terms.items()})
            last.update(video=video, recon=recon.detach().clamp(-1, 1))
        return total, logs

    def after_step(step: int) -> None:
        if trainer.accelerator.is_main_process and (step % tc.image_every == 0 or step == tc.max_steps):
            save_recon_grid(last["video"], last["recon"], trainer.out / "images" / f"recon_{step:06d}.png")

    trainer.fit(loss_fn, after_step)
    vae.eval()
    clips = [data.clips[i]["video"][None] for i in range(tc.stat_batches)]
    mean, std = latent_statistics(vae, clips)
    folder = trainer.export("vae", lambda tmp: write_parent(vae, tmp, mean, std))
    trainer.finish()
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML config, e.g. configs/parent/tiny.yaml")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="overrides, e.g. train.max_steps=100 (default: none)")
    parser.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder (default: start fresh)")
    parser.add_argument("--output_dir", default=None, help="run folder (default: the config's train.output_dir)")
    args = parser.parse_args(argv)
    overrides = cli_overrides(args, {"output_dir": "train.output_dir"})
    cfg = load_config(ParentConfig, args.config, overrides)
    train(cfg, resume=args.resume_from_checkpoint)


if __name__ == "__main__":
    main()
