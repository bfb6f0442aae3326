"""Train the parent VAE: `python -m pyratok.train_parent --config configs/parent/tiny.yaml`.

Stage 1 of PyraTok's setting (DESIGN.md "Tokenizer losses"): a continuous diffusers `AutoencoderKLWan`
trained image-video jointly on natural data, the local stand-in for pretrained Wan 2.1 weights.
Each step sees a batch of still photos (1-frame videos) and a batch of clips (real, pans, Shapes).
"""
from __future__ import annotations

import argparse
import copy
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed
from diffusers import AutoencoderKLWan
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .accelerate_utils import make_accelerator, shutdown
from .backbone import BackboneConfig, build_wan, decode_unclamped
from .checkpoints import find_checkpoint, step_of
from .config import cli_overrides, flat_dict, load_config, save_config
from .data.mix import MixedDataset, collate_videos
from .data.natural import StillImageDataset, clip_paths, load_rgb, packaged_image_paths
from .data.real_clips import ImagePanDataset, RealClipDataset
from .data.shapes import ShapesDataset
from .data.video_io import read_video
from .losses import kl_loss, psnr, reconstruction_loss
from .visualize import save_recon_grid


@dataclass
class ParentDataConfig:
    image_size: int = 128
    image_batch: int = 8  # 1-frame videos per step
    clip_frames: int = 17
    clip_size: int = 64
    clip_batch: int = 2  # clips per step
    real_weight: float = 0.4  # crops of the training clip (bikes)
    pans_weight: float = 0.45  # pans and zooms over the training photos and bikes' frames
    shapes_weight: float = 0.15  # Shapes, a minority
    length: int = 1_000_000
    seed: int = 0


@dataclass
class ParentTrainConfig:
    output_dir: str = "runs/parent-vae"
    max_steps: int = 3000
    lr: float = 5e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    ssim: float = 0.2  # weight of (1 - SSIM)
    mse: float = 1.0  # MSE beside L1: large early errors pull harder (a random Wan starts from flat frames)
    kl: float = 1e-6
    # decode a posterior sample (a VAE) or the posterior mean (an autoencoder whose KL only bounds the
    # latents): a tiny model on a CPU budget learns faster from the mean, as the tokenizer's warm-up did
    sample_posterior: bool = False
    log_every: int = 20
    image_every: int = 250
    save_every: int = 250
    seed: int = 0
    mixed_precision: str = "no"
    stat_batches: int = 16  # clip batches for the exported latents_mean / latents_std


@dataclass
class ParentConfig:
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(base_dim=16, z_dim=8))
    data: ParentDataConfig = field(default_factory=ParentDataConfig)
    train: ParentTrainConfig = field(default_factory=ParentTrainConfig)


def build_parent_data(cfg: ParentDataConfig) -> tuple[StillImageDataset, MixedDataset]:
    """(1-frame photo crops, clips) of the training split only."""
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
    return images, MixedDataset(sources, weights, cfg.length, cfg.seed)


def lr_lambda(tc: ParentTrainConfig):
    """Linear warm-up, then cosine down to `min_lr_ratio` of the peak at `max_steps`."""
    import math

    def f(step: int) -> float:
        if step < tc.warmup_steps:
            return (step + 1) / tc.warmup_steps
        progress = min(1.0, (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps))
        return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def vae_loss(vae: AutoencoderKLWan, video: torch.Tensor, tc: ParentTrainConfig, generator: torch.Generator):
    """L1 + ssim * (1 - SSIM) + kl * KL of one batch (b, 3, T, H, W)."""
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


def export_parent(vae: AutoencoderKLWan, out: Path, mean: list[float], std: list[float]) -> Path:
    """Save a diffusers AutoencoderKLWan folder (fp16 safetensors) atomically: temp folder, then rename."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    half = copy.deepcopy(vae).to(torch.float16)
    half.register_to_config(latents_mean=mean, latents_std=std)
    half.save_pretrained(tmp, safe_serialization=True)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def train(cfg: ParentConfig, resume: str | None = None) -> Path:
    tc, dc = cfg.train, cfg.data
    accelerator = make_accelerator(tc.output_dir, tc.mixed_precision)
    set_seed(tc.seed)
    out = Path(tc.output_dir)
    vae = build_wan(cfg.backbone)
    images, clips = build_parent_data(dc)
    shuffle = dict(shuffle=True, drop_last=True, collate_fn=collate_videos)
    image_loader = DataLoader(images, batch_size=dc.image_batch, generator=torch.Generator().manual_seed(tc.seed), **shuffle)
    clip_loader = DataLoader(clips, batch_size=dc.clip_batch, generator=torch.Generator().manual_seed(tc.seed + 1), **shuffle)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=tc.lr, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc))
    vae, optimizer, image_loader, clip_loader, scheduler = accelerator.prepare(
        vae, optimizer, image_loader, clip_loader, scheduler)

    start = 0
    ckpt = find_checkpoint(out, resume)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        start = step_of(ckpt)
        accelerator.print(f"resumed from {ckpt} at step {start}")
    if accelerator.is_main_process:
        save_config(cfg, out / "config.yaml")
    accelerator.init_trackers("parent_vae", config=flat_dict(cfg))
    # the datasets are length 1e6 and index-deterministic: resuming skips the batches already seen
    image_iter = iter(accelerator.skip_first_batches(image_loader, start) if start else image_loader)
    clip_iter = iter(accelerator.skip_first_batches(clip_loader, start) if start else clip_loader)
    model = accelerator.unwrap_model(vae)
    bar = tqdm(range(start, tc.max_steps), initial=start, total=tc.max_steps, disable=not accelerator.is_main_process)
    for step in bar:
        noise = torch.Generator().manual_seed(tc.seed * 1_000_003 + step * 7 + accelerator.process_index)
        metrics = {}
        for name, batch in (("image", next(image_iter)), ("clip", next(clip_iter))):
            video = batch["video"].to(accelerator.device)
            loss, terms, recon = vae_loss(model, video, tc, noise)
            accelerator.backward(loss)
            metrics.update({f"{name}/{k}": float(v.detach()) for k, v in terms.items()})
        if tc.max_grad_norm:
            accelerator.clip_grad_norm_(vae.parameters(), tc.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if done % tc.log_every == 0 or done == tc.max_steps:
            metrics["lr"] = scheduler.get_last_lr()[0]
            accelerator.log(metrics, step=done)
            bar.set_postfix(img=f"{metrics['image/psnr']:.2f}", clip=f"{metrics['clip/psnr']:.2f}")
        if accelerator.is_main_process and (done % tc.image_every == 0 or done == tc.max_steps):
            save_recon_grid(video, recon.detach().clamp(-1, 1), out / "images" / f"recon_{done:06d}.png")
        if done % tc.save_every == 0 or done == tc.max_steps:
            accelerator.save_state(str(out / "checkpoints" / f"checkpoint-{done}"))

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model.eval()
        stats_loader = DataLoader(clips, batch_size=dc.clip_batch, collate_fn=collate_videos)
        batches = [b["video"] for _, b in zip(range(tc.stat_batches), stats_loader)]
        mean, std = latent_statistics(model, batches)
        export_parent(model, out / "vae", mean, std)
    shutdown(accelerator)
    return out / "vae"


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
