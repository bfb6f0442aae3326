"""How the parent VAE should start: Wan 2.1's and Wan 2.2's layouts from diffusers' random init against the
parent's (Wan 2.1's layout with 2x2 patches) started as the blur it must beat; all 4x8x8, z 16.

    OMP_NUM_THREADS=1 python bench/parent_layouts.py [--steps 300]

Each start trains from the same seed on batches of 8 training-photo crops (64x64, 1-frame videos)
with the parent VAE's loss (pyratok.train_parent.vae_loss); every 50 steps it prints seconds per
step and PSNR on 32 crops of the held-out photos, beside the blur at the same compression.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from pyratok.backbone import BackboneConfig, build_wan  # noqa: E402
from pyratok.data.natural import StillImageDataset  # noqa: E402
from pyratok.losses import blur_reference, psnr  # noqa: E402
from pyratok.parent_init import blur_init_  # noqa: E402
from pyratok.train_parent import ParentConfig, ParentTrainConfig, vae_loss  # noqa: E402

STARTS = {  # name: (layout, blur init)
    "wan2.1 random": (BackboneConfig(base_dim=16, z_dim=16), False),
    "wan2.2 random": (BackboneConfig(base_dim=32, z_dim=16, dim_mult=[1, 2, 2], temperal_downsample=[True, True],
                                     is_residual=True, patch_size=2), False),
    "parent blur-init": (ParentConfig().backbone, True),
}


def held_out_psnr(vae, video: torch.Tensor) -> float:
    with torch.no_grad():
        return float(psnr(vae.decode(vae.encode(video).latent_dist.mean).sample.clamp(-1, 1), video))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    train = StillImageDataset.packaged("train", size=64, length=10**6, seed=0)
    held = StillImageDataset.packaged("heldout", size=64, length=32, seed=1234)
    held_video = torch.stack([held[i]["video"] for i in range(len(held))])  # (32, 3, 1, 64, 64)
    print(f"held-out photos, blur 1x8x8: {float(psnr(blur_reference(held_video, (1, 8, 8)), held_video)):.2f} dB")
    tc, rng = ParentTrainConfig(), torch.Generator().manual_seed(0)
    for name, (layout, blur) in STARTS.items():
        torch.manual_seed(0)
        vae = build_wan(layout)
        if blur:
            blur_init_(vae)
        print(f"{name}: step 0, held-out PSNR {held_out_psnr(vae, held_video):.2f} dB")
        opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=tc.betas)
        start = time.perf_counter()
        for step in range(1, args.steps + 1):
            video = torch.stack([train[step * 8 + j]["video"] for j in range(8)])  # (8, 3, 1, 64, 64)
            loss, _, _ = vae_loss(vae, video, tc, rng)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), tc.max_grad_norm)
            opt.step()
            if step % 50 == 0:
                seconds = (time.perf_counter() - start) / step
                print(f"{name}: step {step}, {seconds:.2f} s/step, held-out PSNR {held_out_psnr(vae, held_video):.2f} dB",
                      flush=True)


if __name__ == "__main__":
    main()
