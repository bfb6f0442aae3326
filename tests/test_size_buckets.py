"""Several clip sizes in one run: the token cache records each shard's grids, batches come from one
size bucket, and a generator trained on two sizes samples both and a third aspect ratio it never saw."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from generator import PyraTokGenerator, TokenCacheDataset, build_token_cache, generate
from generator.buckets import GridBucketSampler
from generator.objective import generator_loss
from generator.token_cache import QuantizerEncoder, random_latents
from pyratok.lapq import LaPQ, LaPQConfig

SIZES = [(3, 8, 8), (3, 8, 16)]  # latent grids: square and wide


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        quantizer = LaPQ(LaPQConfig(use_text=False, hidden_dim=32)).eval()
    g = torch.Generator().manual_seed(0)
    samples = [s["latent"] for grid in SIZES for s in random_latents(5, 8, grid, g)]
    samples = samples[::2] + samples[1::2]  # sizes interleaved, as a real dataset would give them
    out = tmp_path_factory.mktemp("multi")
    return TokenCacheDataset(build_token_cache(QuantizerEncoder(quantizer), None, samples, out, batch_size=2,
                                               shard_size=3, progress=False))


def test_cache_records_each_size(cache):
    assert len(cache) == 10 and cache.latent_grids == sorted(SIZES)
    assert sorted(cache.row_latent_grid(i) for i in range(10)) == sorted(SIZES * 5)
    for i in range(10):
        item = cache[i]
        assert item["latent_grid"] == cache.row_latent_grid(i)
        assert tuple(item["indices"][-1].shape) == item["latent_grid"]
    with pytest.raises(ValueError, match="several sizes"):
        cache.latent_grid
    mixed = [next(cache[i] for i in range(10) if cache.row_latent_grid(i) == grid) for grid in SIZES]
    with pytest.raises(ValueError, match="mixes latent grids"):
        cache.collate(mixed)


def test_bucket_sampler_batches_one_size_and_covers_everything(cache):
    sampler = GridBucketSampler(cache, batch_size=2, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 6  # 5 per size: 2 + 2 + 1 each
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert all(len({cache.row_latent_grid(i) for i in b}) == 1 for b in batches)
    assert list(sampler) == batches  # the order depends on (seed, epoch) only
    sampler.set_epoch(1)
    assert list(sampler) != batches
    assert len(GridBucketSampler(cache, batch_size=2, drop_last=True)) == 4


def test_generator_trained_on_two_sizes_samples_both_and_a_third(cache):
    quantizer = cache.load_quantizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = PyraTokGenerator(width=64, depth=2, heads=4, num_levels=4).train()
    loader = DataLoader(cache, batch_sampler=GridBucketSampler(cache, 5, seed=0), collate_fn=cache.collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rng = torch.Generator().manual_seed(0)

    def accuracy():
        with torch.no_grad():
            return {b["latent_grid"]: float(generator_loss(model, quantizer, b, rng, 0.0)[1]["bit_acc"]) for b in loader}

    before = accuracy()
    for _ in range(15):
        for batch in loader:
            loss, _ = generator_loss(model, quantizer, batch, rng, cfg_dropout=0.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    after = accuracy()
    assert sorted(after) == sorted(SIZES)
    assert all(after[g] > before[g] + 0.1 for g in SIZES), (before, after)
    model.eval()
    for grid in SIZES + [(3, 16, 8)]:  # the tall one was never seen
        pyramid = generate(model, quantizer, None, None, grid, batch_size=1, generator=torch.Generator().manual_seed(1))
        assert pyramid.latent_grid == grid and tuple(pyramid.bits[-1].shape[1:4]) == grid
