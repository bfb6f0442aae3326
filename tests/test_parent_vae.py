"""The parent VAE: natural data split once into train / held-out, its trainer, its diffusers export, and
its evaluation beside the blur at the same compression."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors import safe_open

from pyratok.backbone import BackboneConfig, build_wan
from pyratok.data.natural import HELDOUT_IMAGES, StillImageDataset, clip_paths, packaged_image_paths
from pyratok.data.real_clips import RealClipDataset
from pyratok.evaluate import build_eval_data, evaluate, main as evaluate_main
from pyratok.losses import blur_reference, latent_snr, psnr, ssim01
from pyratok.parent_init import blur_init_
from pyratok.train_parent import ParentConfig, latent_statistics, load_parent_weights, train, write_parent

pytestmark = pytest.mark.usefixtures("one_thread")


def test_held_out_photos_and_clip_never_reach_training():
    train_names = {p.name for p in packaged_image_paths("train")}
    heldout_names = {p.name for p in packaged_image_paths("heldout")}
    assert heldout_names == set(HELDOUT_IMAGES) and not train_names & heldout_names
    assert len(train_names) >= 15
    assert [p.stem for p in clip_paths("train")] == ["bikes"]
    assert [p.stem for p in clip_paths("heldout")] == ["carphone_pristine"]
    assert all("bigbuckbunny" not in str(p) for split in ("train", "heldout") for p in clip_paths(split))
    with pytest.raises(ValueError, match="'val'"):
        packaged_image_paths("val")


def test_still_images_are_deterministic_one_frame_videos():
    ds = StillImageDataset.packaged("heldout", size=32, length=4, seed=3)
    a, b = ds[2]["video"], ds[2]["video"]
    assert a.shape == (3, 1, 32, 32) and torch.equal(a, b) and -1 <= a.min() and a.max() <= 1
    assert not torch.equal(ds[1]["video"], a)


def test_blur_reference_and_metrics():
    video = torch.rand(2, 3, 9, 32, 32) * 2 - 1
    blur = blur_reference(video, (3, 4, 4))
    assert blur.shape == video.shape
    flat = torch.full_like(video, 0.25)
    assert torch.allclose(blur_reference(flat, (3, 4, 4)), flat)
    assert float(psnr(blur, video)) < float(psnr(blur_reference(video, (9, 16, 16)), video))  # finer = closer
    assert float(ssim01(video, video)) == pytest.approx(1.0, abs=1e-5)
    z = torch.randn(4, 8, 2, 2, 2)
    assert float(latent_snr(z + 0.1 * torch.randn_like(z), z)) == pytest.approx(20.0, abs=1.5)


def test_train_parent_exports_a_plain_diffusers_folder(tmp_path):
    cfg = ParentConfig()
    cfg.backbone.base_dim, cfg.backbone.z_dim, cfg.train.init = 8, 4, "random"
    cfg.data.image_size, cfg.data.images_per_clip, cfg.data.clip_size, cfg.data.clip_frames = 32, 2, 32, 5
    cfg.train.output_dir, cfg.train.max_steps, cfg.train.stat_batches = str(tmp_path / "run"), 2, 1
    cfg.train.warmup_steps, cfg.train.save_every, cfg.train.image_every = 1, 1, 1
    folder = train(cfg)
    vae = AutoencoderKLWan.from_pretrained(folder)  # diffusers alone, no project code
    with safe_open(folder / "diffusion_pytorch_model.safetensors", "pt") as f:  # stored in fp16
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert len(vae.config.latents_mean) == 4 and all(s > 0 for s in vae.config.latents_std)
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-2").is_dir()

    vae = AutoencoderKLWan.from_pretrained(folder, torch_dtype=torch.float32)
    data = build_eval_data("heldout-real", num_clips=2, num_frames=5, size=32, seed=0)
    result = evaluate(vae, data, batch_size=2)
    assert result["clips"] == 2 and {"psnr", "blur_psnr", "ssim", "blur_ssim"} <= set(result)
    evaluate_main(["--checkpoint", str(folder), "--data", "heldout-images", "--num-clips", "2", "--size", "32",
                   "--out", str(tmp_path / "eval")])
    assert "blur_psnr" in json.loads((tmp_path / "eval" / "metrics.json").read_text())


@torch.no_grad()
def test_blur_init_starts_as_the_blur_and_a_random_start_does_not():
    """The parent starts as a box-blur codec at its own compression (pyratok.parent_init)."""
    backbone = ParentConfig().backbone
    clips = RealClipDataset(clip_paths("heldout"), num_frames=9, size=64, length=2, seed=0)
    video = torch.stack([clips[i]["video"] for i in range(2)])  # (2, 3, 9, 64, 64)
    blur = float(psnr(blur_reference(video, backbone.latent_grid(9, 64, 64)), video))

    def recon_psnr(init: bool) -> float:
        torch.manual_seed(0)
        vae = build_wan(backbone)
        if init:
            blur_init_(vae)
        return float(psnr(vae.decode(vae.encode(video).latent_dist.mean).sample, video))

    assert recon_psnr(True) > blur - 1.0  # nearest rather than trilinear upsampling: a little below
    assert recon_psnr(False) < blur - 5.0
    with pytest.raises(ValueError, match="base_dim=8"):
        blur_init_(build_wan(BackboneConfig(base_dim=8, z_dim=16, dim_mult=[1, 2, 2], patch_size=2,
                                            temperal_downsample=[True, True])))
    with pytest.raises(ValueError, match="is_residual=True"):
        blur_init_(build_wan(BackboneConfig(base_dim=32, z_dim=16, dim_mult=[1, 2, 2], patch_size=2,
                                            temperal_downsample=[True, True], is_residual=True)))


SHIPPED_PARENT = Path(__file__).resolve().parents[1] / "checkpoints" / "pyratok-vae-tiny"


@pytest.mark.skipif(not (SHIPPED_PARENT / "config.json").is_file(), reason="no shipped parent VAE")
@torch.no_grad()
def test_shipped_parent_beats_the_blur_on_the_held_out_clip():
    vae = AutoencoderKLWan.from_pretrained(SHIPPED_PARENT, torch_dtype=torch.float32)  # diffusers alone
    clips = RealClipDataset(clip_paths("heldout"), num_frames=9, size=64, length=2, seed=0)
    video = torch.stack([clips[i]["video"] for i in range(2)])  # (2, 3, 9, 64, 64), carphone
    recon = vae.decode(vae.encode(video).latent_dist.mean).sample
    blur = blur_reference(video, BackboneConfig.of(vae).latent_grid(9, 64, 64))
    assert float(psnr(recon, video)) > float(psnr(blur, video)) + 2.0


def test_latent_statistics_are_per_channel():
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, num_res_blocks=1).eval()
    mean, std = latent_statistics(vae, [torch.rand(2, 3, 5, 32, 32) * 2 - 1])
    assert len(mean) == len(std) == 4 and all(s > 0 for s in std)


def test_a_saved_parent_seeds_a_new_run(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, num_res_blocks=1)
    write_parent(vae, tmp_path / "vae", [0.0] * 4, [1.0] * 4)
    fresh = AutoencoderKLWan(base_dim=8, z_dim=4, num_res_blocks=1)
    load_parent_weights(fresh, tmp_path / "vae")
    for (name, a), b in zip(vae.state_dict().items(), fresh.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), name
    with pytest.raises(RuntimeError):
        load_parent_weights(AutoencoderKLWan(base_dim=16, z_dim=4, num_res_blocks=1), tmp_path / "vae")
