"""`GridBucketSampler`: batches of one clip size from a token cache that holds several.

PyraTok's generator trained on several resolutions / aspect ratios at once (as VAR / Infinity do):
a batch stacks pyramids, so its samples share a latent grid; sizes are mixed across batches.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler


class GridBucketSampler(Sampler[list[int]]):
    """Batch sampler: indices grouped by latent grid, shuffled within each bucket and batches shuffled
    across buckets; the order depends only on (seed, epoch). dataset: anything with `__len__` and
    `row_latent_grid(i)` (a `TokenCacheDataset`)."""

    def __init__(self, dataset, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.buckets: dict[tuple, list[int]] = {}
        for i in range(len(dataset)):
            self.buckets.setdefault(tuple(dataset.row_latent_grid(i)), []).append(i)
        self.sampler = _Epoch()  # where accelerate's shard wrapper sends set_epoch (batch_sampler.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.sampler.epoch)
        batches = []
        for grid in sorted(self.buckets):
            rows = self.buckets[grid]
            if self.shuffle:
                rows = [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()]
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start:start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        full, rest = zip(*(divmod(len(r), self.batch_size) for r in self.buckets.values())) if self.buckets else ((), ())
        return sum(full) + (0 if self.drop_last else sum(1 for r in rest if r))


class _Epoch:
    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def token_cache_loader(dataset, batch_size: int, seed: int, num_workers: int = 0, deepspeed_plugin=None) -> DataLoader:
    """Shuffled batches of a token cache: a plain DataLoader for one clip size, size buckets for several
    (only full batches then, so that accelerate's sharding never pads a batch with another size)."""
    if len(dataset.latent_grids) == 1:
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=dataset.collate,
                          num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
    if deepspeed_plugin is not None and deepspeed_plugin.deepspeed_config.get("train_micro_batch_size_per_gpu") == "auto":
        deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size  # a batch sampler hides it
    buckets = GridBucketSampler(dataset, batch_size, seed=seed, drop_last=True)
    return DataLoader(dataset, batch_sampler=buckets, collate_fn=dataset.collate, num_workers=num_workers)
