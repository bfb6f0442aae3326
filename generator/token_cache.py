"""Token cache: tokenizer pyramids and text embeddings computed once into safetensors shards.

Feeds PyraTok's generator training (next-scale prediction over LaPQ tokens) without running the
VAE per step; the cache also keeps the LaPQ dequantizer the generator's inputs are built with.
Layout: index.json, shard_00000.safetensors ... (one clip size per shard; level{l}: (n, t_l, h_l, w_l)
codebook indices, text_states: (n, s, d), text_mask: (n, s) bool, the caption's phrase vectors
phrase_text_states: (n, p, d) / phrase_text_mask: (n, p) (`TextEncoder.phrases`), and in a cache made with
swapped captions (generator.contrast) negative_text_states / negative_text_mask, and in a cache made with
latents the unquantized latent each pyramid quantizes, latent: (n, c, t, h, w) float16), quantizer.safetensors +
quantizer_config.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from pyratok.config import load_config, save_config
from pyratok.lapq import LaPQ, LaPQConfig
from pyratok.null_text import pad_text
from pyratok.pyramid import TokenPyramid, indices_to_bits
from pyratok.text_encoder import join_phrases

INDEX, Q_WEIGHTS, Q_CONFIG = "index.json", "quantizer.safetensors", "quantizer_config.json"
FORMAT_VERSION = 2  # 2: each shard records its latent grid and level grids (caches of several sizes)


class TokenCacheWriter:
    """Collects batches of (pyramid, text) and writes shards of up to `shard_size` samples of one size."""

    def __init__(self, out_dir, shard_size: int = 256, text_dtype: torch.dtype = torch.float16):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size, self.text_dtype = shard_size, text_dtype
        self.pending: dict[tuple, list[dict]] = {}  # latent grid -> samples waiting for a shard
        self.grids: dict[tuple, list] = {}  # latent grid -> its level grids
        self.shards: list[dict] = []
        self.meta: dict | None = None

    def add(self, pyramid: TokenPyramid, text_states: torch.Tensor | None = None, text_mask=None,
            negative_states: torch.Tensor | None = None, negative_mask=None,
            phrase_states: torch.Tensor | None = None, phrase_mask=None, latents: torch.Tensor | None = None):
        """pyramid of batch b; text_states (b, s, d), text_mask (b, s) bool or both None; negative_states /
        negative_mask: the same for the swapped captions (generator.contrast), or None; phrase_states (b, p, d)
        / phrase_mask (b, p): the captions' phrase vectors, or None; latents (b, c, t, h, w): the unquantized
        latents the pyramid quantizes (a refiner with `target: latent` learns them), or None."""
        meta = {"num_bits": pyramid.num_bits, "num_levels": len(pyramid.grids), "has_text": text_states is not None,
                "text_dim": None if text_states is None else int(text_states.shape[-1])}
        if latents is not None:
            want = (pyramid.batch_size, *latents.shape[1:2], *pyramid.latent_grid)
            if latents.dim() != 5 or tuple(latents.shape) != want:
                raise ValueError(f"latents must be (b, c, t, h, w) = {want} to match the pyramid, got "
                                 f"{tuple(latents.shape)}")
            meta["has_latents"] = True
        for name, what, extra in (("has_negatives", "swapped captions", negative_states),
                                  ("has_phrases", "phrase vectors", phrase_states)):
            if extra is not None:
                if text_states is None:
                    raise ValueError(f"{what} need the true captions' text_states too")
                meta[name] = True
        if self.meta is None:
            self.meta = meta
        elif meta != self.meta:
            raise ValueError(f"every sample of a cache must share bits, levels and text layout: {meta} != {self.meta}")
        key = tuple(pyramid.latent_grid)
        self.grids[key] = [list(g) for g in pyramid.grids]
        indices = [i.cpu() for i in pyramid.indices]  # per level (b, t_l, h_l, w_l)
        for j in range(pyramid.batch_size):
            sample = {f"level{l}": idx[j] for l, idx in enumerate(indices)}
            if latents is not None:
                sample["latent"] = latents[j].detach().cpu().to(self.text_dtype)  # float16, as the text states
            for prefix, states, masks in (("", text_states, text_mask), ("negative_", negative_states, negative_mask),
                                          ("phrase_", phrase_states, phrase_mask)):
                if states is not None:
                    mask = torch.ones(states.shape[1], dtype=torch.bool) if masks is None else masks[j].cpu().bool()
                    sample[f"{prefix}text_states"] = states[j].detach().cpu().to(self.text_dtype)
                    sample[f"{prefix}text_mask"] = mask
            pending = self.pending.setdefault(key, [])
            pending.append(sample)
            if len(pending) == self.shard_size:
                self._flush(key)

    def _flush(self, key: tuple):
        pending = self.pending.get(key)
        if not pending:
            return
        index_dtype = torch.int32 if self.meta["num_bits"] <= 31 else torch.int64
        tensors = {}
        for name in pending[0]:
            rows = [s[name] for s in pending]
            if name.startswith("level"):
                tensors[name] = torch.stack(rows).to(index_dtype)
            elif name == "latent":  # (n, c, t, h, w): one size per shard
                tensors[name] = torch.stack(rows).contiguous()
            else:  # pad text to the longest in this shard: (n, s, d) / (n, s)
                s = max(r.shape[0] for r in rows)
                pad = [torch.cat([r, r.new_zeros(s - r.shape[0], *r.shape[1:])]) for r in rows]
                tensors[name] = torch.stack(pad).contiguous()
        name = f"shard_{len(self.shards):05d}.safetensors"
        save_file(tensors, str(self.out_dir / name))
        self.shards.append({"file": name, "num_samples": len(pending), "latent_grid": list(key),
                            "grids": self.grids[key]})
        self.pending[key] = []

    def close(self, quantizer: LaPQ | None = None) -> Path:
        """Write the last shards, the index and (if given) the quantizer; returns the cache folder."""
        for key in list(self.pending):
            self._flush(key)
        if self.meta is None:
            raise ValueError(f"no samples were added to the token cache in {self.out_dir}")
        index = {"format": FORMAT_VERSION, "num_samples": sum(s["num_samples"] for s in self.shards),
                 **self.meta, "shards": self.shards}
        tmp = self.out_dir / (INDEX + ".tmp")
        tmp.write_text(json.dumps(index, indent=2) + "\n")
        tmp.replace(self.out_dir / INDEX)
        if quantizer is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in quantizer.state_dict().items()},
                      str(self.out_dir / Q_WEIGHTS))
            save_config(quantizer.config, self.out_dir / Q_CONFIG)
        return self.out_dir


def _split_sample(sample):
    """(video_or_latent, prompt or None) from a dict, a (video, prompt) pair or a bare tensor."""
    if isinstance(sample, dict):
        video = next((sample[k] for k in ("video", "latent", "pixel_values") if k in sample), None)
        prompt = next((sample[k] for k in ("prompt", "caption", "text") if k in sample), None)
        if video is None:
            raise ValueError(f"dataset sample has no 'video' / 'latent' key: {sorted(sample)}")
        return video, prompt
    if isinstance(sample, (tuple, list)):
        return sample[0], (sample[1] if len(sample) > 1 else None)
    return sample, None


@torch.no_grad()
def build_token_cache(tokenizer, text_encoder, dataset, out_dir, batch_size: int = 8, shard_size: int = 256,
                      text_dtype: torch.dtype = torch.float16, device=None, progress: bool = True,
                      latents: bool = False) -> Path:
    """Encode every sample of `dataset` once: `tokenizer.encode(video, prompt_embeds, prompt_mask)`
    -> TokenPyramid, `text_encoder(prompts)` -> .hidden_states / .attention_mask (None: no text); a
    sample's "negative_prompt" (a swapped caption, generator.contrast) is encoded and stored beside it.
    `latents`: also store the unquantized latent of each pyramid (`encode(..., return_latent=True)`).
    The tokenizer's `.quantizer` (a LaPQ) is stored with the cache for training."""
    from tqdm.auto import tqdm

    writer = TokenCacheWriter(out_dir, shard_size, text_dtype)
    batches: dict[tuple, list] = {}  # video shape -> samples: a batch holds one size
    bar = tqdm(desc="token cache", disable=not progress, unit="sample")

    def flush(batch):
        videos = torch.stack([torch.as_tensor(v) for v, _, _ in batch])
        if device is not None:
            videos = videos.to(device)
        prompts, negatives = [p for _, p, _ in batch], [n for _, _, n in batch]
        states = mask = neg_states = neg_mask = phrase_states = phrase_mask = None
        if text_encoder is not None and all(p is not None for p in prompts):
            out = text_encoder(prompts)
            states, mask = out.hidden_states, out.attention_mask
            if hasattr(text_encoder, "phrases"):
                phrase_states, phrase_mask = text_encoder.phrases(prompts)
            if any(n is not None for n in negatives):
                if not all(n is not None for n in negatives):
                    raise ValueError("some samples have a negative_prompt and some do not: give every sample one")
                neg = text_encoder(negatives)
                neg_states, neg_mask = neg.hidden_states, neg.attention_mask
        encoded = tokenizer.encode(videos, prompt_embeds=states, prompt_mask=mask, return_latent=latents)
        pyramid, latent = encoded if latents else (encoded, None)
        writer.add(pyramid.to("cpu"), states, mask, neg_states, neg_mask, phrase_states, phrase_mask, latent)
        bar.update(len(batch))
        batch.clear()

    for sample in dataset:
        video, prompt = _split_sample(sample)
        negative = sample.get("negative_prompt") if isinstance(sample, dict) else None
        batch = batches.setdefault(tuple(torch.as_tensor(video).shape), [])
        batch.append((video, prompt, negative))
        if len(batch) == batch_size:
            flush(batch)
    for batch in batches.values():
        if batch:
            flush(batch)
    bar.close()
    return writer.close(getattr(tokenizer, "quantizer", None))


class QuantizerEncoder:
    """`encode` over latents with a bare LaPQ (no VAE): caches from random latents in tests."""

    def __init__(self, quantizer: LaPQ):
        self.quantizer = quantizer

    @torch.no_grad()
    def encode(self, latents, prompt_embeds=None, prompt_mask=None, return_latent: bool = False):
        pyramid = self.quantizer(latents, text_states=prompt_embeds, text_mask=prompt_mask).pyramid
        return (pyramid, latents) if return_latent else pyramid


def random_latents(num: int, channels: int, latent_grid, generator: torch.Generator, prompts=None) -> list[dict]:
    """`num` samples {"latent": (c, t, h, w) ~ N(0, 1), "prompt": str} for test caches."""
    prompts = prompts or [f"sample {i}" for i in range(num)]
    return [{"latent": torch.randn(channels, *latent_grid, generator=generator),
             "prompt": prompts[i % len(prompts)]} for i in range(num)]


class TokenCacheDataset(Dataset):
    """Reads a token cache; items are {indices: list of (t_l, h_l, w_l), text_states, text_mask}.

    `phrase_tokens=True` (a generator with `model.phrase_tokens`): each batch's text_states / text_mask are
    the caption's token states followed by its phrase vectors (`pyratok.text_encoder.join_phrases`); with
    `word_tokens=False` the phrase vectors alone."""

    def __init__(self, cache_dir, phrase_tokens: bool = False, word_tokens: bool = True):
        self.cache_dir = Path(cache_dir)
        path = self.cache_dir / INDEX
        if not path.is_file():
            raise FileNotFoundError(f"no token cache index at {path}; build one with build_token_cache")
        self.index = json.loads(path.read_text())
        if self.index.get("format") not in (1, FORMAT_VERSION):  # format 1: one size, grids in the index
            raise ValueError(f"{path}: unsupported token cache format {self.index.get('format')!r}")
        self.num_bits, self.num_levels = self.index["num_bits"], self.index["num_levels"]
        self.has_text = self.index["has_text"]
        self.has_negatives = self.index.get("has_negatives", False)  # swapped captions (generator.contrast)
        self.has_phrases = self.index.get("has_phrases", False)  # the captions' phrase vectors
        self.has_latents = self.index.get("has_latents", False)  # the unquantized latents (build_cache --latents)
        prefixes = ("",) + ("negative_",) * self.has_negatives + ("phrase_",) * self.has_phrases
        self.text_prefixes = prefixes if self.has_text else ()  # text_states, negative_text_states, ...
        if phrase_tokens and not (self.has_text and self.has_phrases):
            raise ValueError(f"phrase_tokens=True needs the captions' phrase vectors, but the token cache {path} has "
                             "none: build it again with generator.build_cache")
        if not (word_tokens or phrase_tokens):
            raise ValueError("word_tokens=False leaves no text: it needs phrase_tokens=True")
        self.phrase_tokens, self.word_tokens = phrase_tokens, word_tokens
        self.shard_grids = {s["file"]: (tuple(s.get("latent_grid", self.index.get("latent_grid"))),
                                        [tuple(g) for g in s.get("grids", self.index.get("grids"))])
                            for s in self.index["shards"]}
        self.rows = [(s["file"], r) for s in self.index["shards"] for r in range(s["num_samples"])]
        self.latent_grids = sorted({grid for grid, _ in self.shard_grids.values()})

    def row_latent_grid(self, i: int) -> tuple[int, int, int]:
        """Latent (t, h, w) of sample i, without reading it (for size buckets)."""
        return self.shard_grids[self.rows[i][0]][0]

    @property
    def latent_grid(self) -> tuple[int, int, int]:
        """The cache's one latent grid; a cache of several sizes raises (see `latent_grids`)."""
        if len(self.latent_grids) != 1:
            raise ValueError(f"token cache {self.cache_dir} holds several sizes {self.latent_grids}")
        return self.latent_grids[0]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a token cache of {len(self)} samples")
        file, row = self.rows[i]
        with safe_open(str(self.cache_dir / file), framework="pt") as f:
            item = {"indices": [f.get_slice(f"level{l}")[row].to(torch.int64) for l in range(self.num_levels)],
                    "latent_grid": self.shard_grids[file][0]}
            for prefix in self.text_prefixes:
                item[f"{prefix}text_states"] = f.get_slice(f"{prefix}text_states")[row]
                item[f"{prefix}text_mask"] = f.get_slice(f"{prefix}text_mask")[row]
            if self.has_latents:
                item["latent"] = f.get_slice("latent")[row]
        return item

    def collate(self, samples: list[dict]) -> dict:
        """Batch: bits per level (b, t_l, h_l, w_l, k) float {-1, +1}, text (b, s, d) float32 + mask (b, s)
        (and the swapped captions' negative_text_states / negative_text_mask, the phrase vectors
        phrase_text_states / phrase_text_mask, the unquantized latents "latent" (b, c, t, h, w) float32, when the
        cache has them; else "latent" is None).
        Every sample must have one latent grid (batch with `generator.buckets.GridBucketSampler`)."""
        sizes = sorted({x["latent_grid"] for x in samples})
        if len(sizes) != 1:
            raise ValueError(f"a batch mixes latent grids {sizes}; batch with generator.buckets.GridBucketSampler")
        bits = [indices_to_bits(torch.stack([s["indices"][l] for s in samples]), self.num_bits)
                for l in range(self.num_levels)]
        batch = {"bits": bits, "latent_grid": sizes[0], "text_states": None, "text_mask": None,
                 "latent": torch.stack([x["latent"] for x in samples]).float() if self.has_latents else None}
        for prefix in self.text_prefixes:
            states_key, mask_key = f"{prefix}text_states", f"{prefix}text_mask"
            s = max(x[states_key].shape[0] for x in samples)
            padded = [pad_text(x[states_key][None], x[mask_key][None].bool(), s) for x in samples]
            batch[states_key] = torch.cat([states for states, _ in padded]).float()  # (b, s, d)
            batch[mask_key] = torch.cat([mask for _, mask in padded])  # (b, s)
        if self.phrase_tokens:  # (b, s + p, d): the tokens, then one vector per phrase; or (b, p, d) alone
            phrases = batch.pop("phrase_text_states"), batch.pop("phrase_text_mask")
            batch["text_states"], batch["text_mask"] = join_phrases(batch["text_states"], batch["text_mask"], *phrases,
                                                                    words=self.word_tokens)
        return batch

    def load_quantizer(self, device=None) -> LaPQ:
        """The LaPQ the cache was made with, frozen, for teacher-forcing inputs."""
        weights, config = self.cache_dir / Q_WEIGHTS, self.cache_dir / Q_CONFIG
        if not weights.is_file():
            raise FileNotFoundError(f"token cache {self.cache_dir} has no {Q_WEIGHTS}: the tokenizer had no .quantizer")
        quantizer = LaPQ(load_config(LaPQConfig, config))
        quantizer.load_state_dict(load_file(str(weights)))
        return quantizer.to(device).eval().requires_grad_(False)
