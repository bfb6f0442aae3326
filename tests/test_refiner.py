"""Tests for the latent refiner (generator.refiner): identity at the start, the text it reads, its training
run (exact resume, export) and its place in the pipeline (use_refiner, save / load, mismatches refused)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from test_pipeline import SMALL, gens, get_dummy_components

from generator.model import PyraTokGenerator
from generator.refiner import NUM_TRAIN_TIMESTEPS, LatentRefiner, flow_loss, refiner_loss
from generator.token_cache import TokenCacheDataset
from generator.train import main as generator_main
from generator.train_refiner import main as refiner_main
from pipelines.pipeline_pyratok_t2v import PyraTokT2VPipeline

from factories import fresh_accelerate_state

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_GENERATOR = ["model.width=32", "model.depth=1", "model.heads=2", "train.batch_size=2", "train.max_steps=2"]
TINY_REFINER = ["model.width=16", "model.depth=1", "model.text_heads=2", "train.batch_size=2", "train.log_every=1"]


def tiny_refiner(latent_channels: int = 4, text_dim: int = 16, keep_levels: int = 2, seed: int = 0) -> LatentRefiner:
    """For the 3-level dummy pipeline: it keeps the clip's first 2 levels, the generator draws the finest."""
    torch.manual_seed(seed)
    return LatentRefiner(latent_channels=latent_channels, width=16, depth=1, text_dim=text_dim, text_heads=2,
                         keep_levels=keep_levels)


def test_an_untrained_refiner_returns_its_input_and_names_bad_shapes():
    refiner = tiny_refiner()
    z, text, mask = torch.randn(2, 4, 2, 4, 4), torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.bool)
    assert torch.equal(refiner(z, text, mask), z)
    with pytest.raises(ValueError, match=r"z_hat must be \(b, 4, t, h, w\), got \(2, 8, 2, 4, 4\)"):
        refiner(torch.randn(2, 8, 2, 4, 4), text, mask)
    with pytest.raises(ValueError, match=r"text_states must be \(2, s, 16\), got \(2, 3, 24\)"):
        refiner(z, torch.randn(2, 3, 24), mask)
    with pytest.raises(ValueError, match=r"text_mask must be \(2, 3\), got \(2, 4\)"):
        refiner(z, text, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="width=12 must be a multiple of 8"):
        LatentRefiner(width=12)


def _far_corner_error(scales: int, depth: int, steps: int = 150) -> float:
    """Train a regress refiner whose every position must add the sign of the far top-left corner's first
    channel; the error left on the bottom-right quadrant (1.0: nothing learned)."""
    torch.manual_seed(0)
    refiner = LatentRefiner(latent_channels=4, width=16, depth=depth, text_dim=8, text_heads=2, scales=scales)
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(refiner.parameters(), lr=3e-3)
    text = torch.zeros(32, 1, 8)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(32, 4, 1, 8, 8, generator=gen)  # (b, c, t, h, w)
        target = z.clone()
        target[:, 0] += torch.sign(z[:, 0, :, :1, :1])
        return z, target

    for _ in range(steps):
        z, target = batch()
        loss = (refiner(z, text) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        z, target = batch()
        return float((refiner(z, text) - target)[:, 0, :, 4:, 4:].pow(2).mean())


def test_a_unet_refiner_reads_the_whole_grid():
    """Mechanism test for `scales`: with three resolutions the corner opposite the one that sets the answer
    learns it; a flat stack of as many blocks (five) cannot reach it."""
    assert _far_corner_error(scales=3, depth=1) < 0.5
    assert _far_corner_error(scales=1, depth=5) > 0.7
    with pytest.raises(ValueError, match="latent_channels, depth and scales must be >= 1"):
        LatentRefiner(scales=0)
    with pytest.raises(ValueError, match=r"a refiner with scales=3 needs h and w divisible by 4, got \(6, 8\)"):
        LatentRefiner(latent_channels=4, width=16, text_dim=8, text_heads=2, scales=3)(
            torch.randn(1, 4, 1, 6, 8), torch.zeros(1, 1, 8))


def _fit(refiner: LatentRefiner, steps: int = 80) -> float:
    """Train on a task only the text can solve: the same noisy z_hat, +1 targets for one caption and -1 for
    the other. Returns the last loss; the identity scores 2 (1 + the noise's variance)."""
    gen = torch.Generator().manual_seed(0)
    texts = torch.randn(2, 3, 16, generator=gen)
    opt = torch.optim.Adam(refiner.parameters(), lr=3e-3)
    for _ in range(steps):
        z = torch.randn(4, 4, 2, 4, 4, generator=gen)
        which = torch.tensor([0, 1, 0, 1])
        target = torch.where(which[:, None, None, None, None] == 0, 1.0, -1.0).expand_as(z)
        loss = torch.nn.functional.mse_loss(refiner(z, texts[which]), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_the_refiner_draws_what_the_caption_says():
    """Mechanism test: with its text attention the refiner learns a caption-dependent correction; with the
    attention detached (gates held at 0) it cannot beat the caption-blind best (a loss of 1)."""
    assert _fit(tiny_refiner()) < 0.3
    blind = tiny_refiner()
    for block in blind.text:
        block.gate.data.zero_()
        block.gate.requires_grad_(False)
    assert _fit(blind) > 0.9


def test_the_refiner_config_round_trips(tmp_path):
    from pathlib import Path

    from generator.train_refiner import RefinerTrainConfig
    from pyratok.config import load_config, save_config

    def round_trip(name: str) -> RefinerTrainConfig:
        cfg = load_config(RefinerTrainConfig, Path(__file__).resolve().parents[1] / f"configs/refiner/{name}.yaml")
        save_config(cfg, tmp_path / f"{name}.yaml")
        assert load_config(RefinerTrainConfig, tmp_path / f"{name}.yaml") == cfg
        return cfg

    cfg, flow = round_trip("conv128"), round_trip("flow128")
    assert (cfg.model.keep_levels, cfg.train.batch_size) == (-1, 16)
    assert (flow.model.mode, flow.model.keep_levels, flow.data.generator_dir) == ("flow", 3, None)
    unet, more = round_trip("flow128_unet"), round_trip("flow128_unet_more")
    assert (unet.model.scales, more.model) == (3, unet.model)  # stage 2 carries on the same refiner
    assert more.train.init_from == f"{unet.train.output_dir}/refiner"
    k2 = round_trip("flow128_unet_k2")  # stage 3: the same refiner, drawing level 2 too, trained at high noise
    # its draw's guidance was chosen again (README, "The refiner's guidance, chosen again")
    assert k2.model == dataclasses.replace(more.model, keep_levels=2, sigma_location=2.0, guidance_scale=3.0)
    assert k2.train.init_from == f"{more.train.output_dir}/refiner"
    latent = round_trip("flow128_unet_k2_latent")  # stage 4: the same refiner, drawing the unquantized latent
    assert latent.model == dataclasses.replace(k2.model, target="latent", guidance_scale=2.0)  # chosen again
    assert latent.train.init_from == f"{k2.train.output_dir}/refiner"
    phrases = round_trip("flow128_unet_k2_latent_phrases")  # stage 5: the same refiner, reading the phrase vectors too
    assert phrases.model == dataclasses.replace(latent.model, phrase_tokens=True, word_tokens=True)
    assert phrases.train.init_from == f"{latent.train.output_dir}/refiner"
    pairs = round_trip("flow128_unet_k2_latent_pairs")  # stage 5 tried: the same refiner, more two-object clips
    assert pairs.model == dataclasses.replace(latent.model, phrase_tokens=False, word_tokens=True)
    assert pairs.train.init_from == f"{latent.train.output_dir}/refiner"
    assert pairs.data.token_cache_dir != latent.data.token_cache_dir
    for override, message in [
            ("model.keep_levels=-2", "model.keep_levels must be >= 0, or -1 for all but the finest, got -2"),
            ("data.guidance_scale=nan", "data.guidance_scale must be a finite number > 0, got nan"),
            ("model.mode=diffuse", "model.mode must be one of"),
            ("model.target=pixels", "model.target must be one of"),
            ("model.word_tokens=false", "model.word_tokens=False leaves the refiner no text"),
            ("model.scales=0", "model.scales must be >= 1, got 0"),
            ("model.sigma_location=inf", "model.sigma_location must be a finite number, got inf"),
            ("model.sample_steps=0", "model.sample_steps must be >= 1 and model.guidance_scale a finite number >= 0, got 0")]:
        with pytest.raises(ValueError, match=message):
            load_config(RefinerTrainConfig, None, [override])


def _train_generator(cache_dir, out) -> None:
    with fresh_accelerate_state():
        assert generator_main(["--set", *TINY_GENERATOR, f"data.token_cache_dir={cache_dir}",
                               f"train.output_dir={out}"]) == 0


def _train_refiner(cache_dir, generator_dir, out, steps: int, *extra: str) -> dict:
    with fresh_accelerate_state():
        assert refiner_main(["--set", *TINY_REFINER, f"data.token_cache_dir={cache_dir}",
                             f"data.generator_dir={generator_dir}", f"train.output_dir={out}",
                             f"train.max_steps={steps}", "train.save_every=2", *extra]) == 0
    return load_file(str(out / "refiner" / "diffusion_pytorch_model.safetensors"))


def test_refiner_training_resumes_exactly_and_learns_from_the_generators_draws(cache_dir, tmp_path):
    _train_generator(cache_dir, tmp_path / "gen")
    generator_dir = tmp_path / "gen" / "generator"
    straight = _train_refiner(cache_dir, generator_dir, tmp_path / "straight", 4)
    _train_refiner(cache_dir, generator_dir, tmp_path / "resumed", 2)
    resumed = _train_refiner(cache_dir, generator_dir, tmp_path / "resumed", 4, "--resume_from_checkpoint", "latest")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert straight["out.2.weight"].abs().sum() > 0  # trained away from the identity
    refiner = LatentRefiner.from_pretrained(tmp_path / "straight" / "refiner")
    assert (refiner.config.latent_channels, refiner.config.keep_levels) == (8, 3)  # the cache's LaPQ, all but the finest

    dataset = TokenCacheDataset(cache_dir)
    batch = dataset.collate([dataset[i] for i in range(4)])
    generator = PyraTokGenerator.from_pretrained(generator_dir).eval()
    loss, logs = refiner_loss(refiner, generator, dataset.load_quantizer(), batch, torch.Generator().manual_seed(0))
    assert logs["drawn_mse"] > 0 and loss.requires_grad  # the generator's draw differs from the clip
    untrained = LatentRefiner.from_config(refiner.config)
    same, logs = refiner_loss(untrained, generator, dataset.load_quantizer(), batch, torch.Generator().manual_seed(0))
    assert same.item() == pytest.approx(logs["drawn_mse"].item())  # the identity scores the draw itself
    with pytest.raises(ValueError, match="keep_levels=4 must leave a level to draw: the cache has 4 levels"):
        refiner_loss(LatentRefiner(latent_channels=8, keep_levels=4), generator, dataset.load_quantizer(), batch,
                     torch.Generator())


def test_the_pipeline_decodes_the_refined_latent(tmp_path):
    components = get_dummy_components()
    refiner = tiny_refiner()
    torch.nn.init.normal_(refiner.out[-1].weight, std=0.1)  # a refiner that changes its input
    pipe = PyraTokT2VPipeline(**components, refiner=refiner)
    pipe.set_progress_bar_config(disable=True)
    refined = pipe("a red circle", generator=gens(3), output_type="latent", **SMALL).frames
    plain = pipe("a red circle", generator=gens(3), output_type="latent", use_refiner=False, **SMALL).frames
    assert all(torch.equal(a, b) for a, b in zip(refined.bits, plain.bits))  # the same draw
    embeds, mask = pipe.encode_prompt("a red circle")[:2]
    torch.testing.assert_close(refined.latent, refiner(plain.latent, embeds, mask))
    blue, blue_mask = pipe.encode_prompt("a blue square")[:2]
    assert not torch.allclose(refiner(plain.latent, blue, blue_mask), refined.latent)  # the caption enters
    video = pipe("a red circle", generator=gens(3), output_type="np", **SMALL).frames
    unrefined = pipe("a red circle", generator=gens(3), output_type="np", use_refiner=False, **SMALL).frames
    assert video.shape == unrefined.shape and abs(video - unrefined).max() > 0

    pipe.save_pretrained(tmp_path / "pipe")
    loaded = PyraTokT2VPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.refiner, LatentRefiner)
    assert all(torch.equal(a, b) for a, b in zip(loaded.refiner.state_dict().values(), refiner.state_dict().values()))
    without = PyraTokT2VPipeline(**get_dummy_components())
    without.save_pretrained(tmp_path / "plain")
    assert PyraTokT2VPipeline.from_pretrained(tmp_path / "plain").refiner is None

    with pytest.raises(ValueError, match="use_refiner must be True or False, got 'yes'"):
        pipe("a red circle", use_refiner="yes", **SMALL)
    with pytest.raises(ValueError, match=r"the refiner was built for \{'latent_channels': 8, 'text_dim': 16\}, "
                                         r"but this vae and transformer give \{'latent_channels': 4, 'text_dim': 16\}"):
        PyraTokT2VPipeline(**get_dummy_components(), refiner=tiny_refiner(latent_channels=8))
    with pytest.raises(ValueError, match="the refiner keeps 3 levels; the transformer draws only 3"):
        PyraTokT2VPipeline(**get_dummy_components(), refiner=tiny_refiner(keep_levels=3))


# --- the flow refiner (mode "flow"): it draws the finer levels' share instead of regressing it ---

class SumLevels:
    """A stand-in quantizer for `flow_loss`: each "level" is a z_hat part already on the latent grid."""

    def reconstruct(self, bits, latent_grid):
        return sum(bits)


def tiny_flow(text_heads_on: bool = True, seed: int = 0) -> LatentRefiner:
    torch.manual_seed(seed)
    refiner = LatentRefiner(latent_channels=4, width=32, depth=2, text_dim=16, text_heads=2, keep_levels=1,
                            mode="flow", sample_steps=12, guidance_scale=2.0)
    if not text_heads_on:  # the text attention detached: gates held at 0
        for block in refiner.text:
            block.gate.data.zero_()
            block.gate.requires_grad_(False)
    return refiner


def _fit_flow(refiner: LatentRefiner, patterns: torch.Tensor, texts: torch.Tensor, steps: int = 600) -> None:
    """Caption k's clips add +patterns[k] or -patterns[k] (a coin per clip) to a random coarse z_hat: two
    outlines per caption, whose mean is nothing at all."""
    gen, rng = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    opt = torch.optim.Adam([p for p in refiner.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(steps):
        which = torch.randint(0, 2, (32,), generator=gen)
        sign = torch.randint(0, 2, (32,), generator=gen) * 2.0 - 1
        coarse = torch.randn(32, 4, 1, 4, 4, generator=gen)
        batch = {"bits": [coarse, sign[:, None, None, None, None] * patterns[which]], "latent_grid": (1, 4, 4),
                 "text_states": texts[which], "text_mask": None}
        loss, _ = flow_loss(refiner, refiner.config, SumLevels(), batch, rng, text_dropout=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _draw_projections(refiner: LatentRefiner, patterns, texts, caption: int, n: int = 16) -> torch.Tensor:
    """(n, 2): each draw's finer share for `caption`, projected on the two patterns (1 = the pattern itself)."""
    coarse = torch.randn(n, 4, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    drawn = refiner.refine(coarse, texts[caption].expand(n, -1, -1), None, generator=gens(*range(n))) - coarse
    flat = patterns.flatten(1)  # (2, c t h w)
    return drawn.flatten(1) @ flat.T / flat.pow(2).sum(1)


def test_the_flow_refiner_draws_an_outline_where_a_regression_averages():
    """Mechanism test: each caption allows two opposite finer shares. The flow refiner's draws land on one of
    its caption's two (the regression's answer, their mean, is zero), and both are drawn; with the text
    attention detached the draws cannot tell the captions' patterns apart."""
    gen = torch.Generator().manual_seed(0)
    patterns = torch.randn(2, 4, 1, 4, 4, generator=gen)
    texts = torch.randn(2, 3, 16, generator=gen)
    refiner = tiny_flow()
    _fit_flow(refiner, patterns, texts)
    for caption in (0, 1):
        proj = _draw_projections(refiner, patterns, texts, caption)
        assert (proj[:, caption].abs() > 0.6).sum() >= 14 and (proj[:, 1 - caption].abs() < 0.4).all()
        assert (proj[:, caption] > 0).sum() >= 3 and (proj[:, caption] < 0).sum() >= 3  # both outlines drawn
    blind = tiny_flow(text_heads_on=False)
    _fit_flow(blind, patterns, texts)
    proj = _draw_projections(blind, patterns, texts, 0)
    assert (proj[:, 0].abs() > 0.6).sum() <= 12 and (proj[:, 1].abs() > 0.6).sum() >= 2  # the captions mixed up


def test_a_flow_refiner_refuses_bad_inputs():
    refiner = tiny_flow()
    z, text = torch.randn(2, 4, 1, 4, 4), torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match="a flow refiner takes noisy and timestep both"):
        refiner(z, text)
    with pytest.raises(ValueError, match=r"noisy must be \(2, 4, 1, 4, 4\) and timestep \(2,\), got \(2, 4, 1, 4, 4\) and \(1,\)"):
        refiner(z, text, noisy=z, timestep=torch.zeros(1))
    with pytest.raises(ValueError, match="a regress refiner takes noisy and timestep neither"):
        tiny_refiner()(torch.randn(2, 4, 2, 4, 4), text, noisy=z, timestep=torch.zeros(2))
    with pytest.raises(ValueError, match="mode must be one of"):
        LatentRefiner(mode="diffuse")
    with pytest.raises(ValueError, match="a regress refiner has no null text"):
        tiny_refiner()(torch.randn(2, 4, 2, 4, 4), text, drop_text=torch.ones(2, dtype=torch.bool))
    batch = {"bits": [z], "latent_grid": (1, 4, 4), "text_states": text, "text_mask": None}
    with pytest.raises(ValueError, match="keep_levels=1 must leave a level to draw: the cache has 1 levels"):
        flow_loss(refiner, refiner.config, SumLevels(), batch, torch.Generator())
    with pytest.raises(ValueError, match="flow_loss trains a flow refiner, got mode='regress'"):
        flow_loss(tiny_refiner(), tiny_refiner().config, SumLevels(), batch, torch.Generator())


def test_a_latent_target_draws_the_clips_latent_not_its_z_hat():
    """`target="latent"`: the flow refiner learns the finer share of the clip's unquantized latent, not of its
    z_hat; read back from the noisy input the loss builds with the same noise and sigmas."""
    seen = {}

    def record(cond, states, mask, noisy=None, timestep=None, drop_text=None):
        seen.update(cond=cond, noisy=noisy, sigma=timestep / NUM_TRAIN_TIMESTEPS)
        return torch.zeros_like(cond)

    gen = torch.Generator().manual_seed(0)
    bits = [torch.randn(8, 4, 1, 4, 4, generator=gen), torch.randn(8, 4, 1, 4, 4, generator=gen)]
    batch = {"bits": bits, "latent_grid": (1, 4, 4), "text_states": torch.randn(8, 3, 16, generator=gen),
             "text_mask": None, "latent": torch.randn(8, 4, 1, 4, 4, generator=gen)}
    for target, want in (("z_hat", bits[0] + bits[1]), ("latent", batch["latent"])):
        refiner = LatentRefiner(latent_channels=4, width=16, depth=1, text_dim=16, text_heads=2, keep_levels=1,
                                mode="flow", target=target)
        flow_loss(record, refiner.config, SumLevels(), batch, torch.Generator().manual_seed(1))
        noise = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))  # the loss's first draw
        sigma = seen["sigma"].view(-1, 1, 1, 1, 1)
        data = (seen["noisy"] - sigma * noise) / (1 - sigma)
        assert torch.equal(seen["cond"], bits[0]) and torch.allclose(data, want - bits[0], atol=1e-4)
    with pytest.raises(ValueError, match="target='latent' learns the unquantized latents, but the token cache has none"):
        flow_loss(record, refiner.config, SumLevels(), {**batch, "latent": None}, torch.Generator())
    with pytest.raises(ValueError, match="target must be one of"):
        LatentRefiner(mode="flow", target="pixels")


def test_the_sigma_location_moves_the_trained_noise_levels():
    """`sigma_location` shifts the logit-normal of training sigmas: the same draws, moved; 0 is the default."""
    refiner, seen = tiny_flow(), {}

    def record(cond, states, mask, noisy, timestep, drop_text):
        seen.setdefault("t", []).append(timestep)
        return noisy

    gen = torch.Generator().manual_seed(0)
    batch = {"bits": [torch.randn(64, 4, 1, 4, 4, generator=gen), torch.randn(64, 4, 1, 4, 4, generator=gen)],
             "latent_grid": (1, 4, 4), "text_states": torch.randn(64, 3, 16, generator=gen), "text_mask": None}
    for location in (0.0, -1.0):
        flow_loss(record, refiner.config, SumLevels(), batch, torch.Generator().manual_seed(1),
                  sigma_location=location)
    default = flow_loss(record, refiner.config, SumLevels(), batch, torch.Generator().manual_seed(1))[0]
    centred, low, again = (t / NUM_TRAIN_TIMESTEPS for t in seen["t"])
    assert torch.equal(centred, again) and default.isfinite()
    logit = torch.logit(centred, eps=1e-6) - torch.logit(low, eps=1e-6)
    assert torch.allclose(logit, torch.ones_like(logit), atol=1e-3)
    assert (low < 0.1).float().mean() > 3 * (centred < 0.1).float().mean()


def test_flow_refiner_training_needs_no_generator_and_resumes_exactly(cache_dir, tmp_path):
    flow = ["model.mode=flow", "data.generator_dir=null"]
    straight = _train_refiner(cache_dir, None, tmp_path / "straight", 4, *flow)
    _train_refiner(cache_dir, None, tmp_path / "resumed", 2, *flow)
    resumed = _train_refiner(cache_dir, None, tmp_path / "resumed", 4, *flow, "--resume_from_checkpoint", "latest")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    refiner = LatentRefiner.from_pretrained(tmp_path / "straight" / "refiner")
    text_dim = TokenCacheDataset(cache_dir)[0]["text_states"].shape[-1]  # read from the cache: no generator
    assert (refiner.config.mode, refiner.config.keep_levels, refiner.config.text_dim) == ("flow", 3, text_dim)
    with fresh_accelerate_state(), pytest.raises(ValueError, match="a regress refiner learns from the generator's draws"):
        refiner_main(["--set", *TINY_REFINER, f"data.token_cache_dir={cache_dir}", "data.generator_dir=null",
                      f"train.output_dir={tmp_path / 'regress'}"])
    # a second stage starts from the first one's weights (train.init_from), not from a fresh init
    stage = _train_refiner(cache_dir, None, tmp_path / "stage2", 1, *flow, "train.lr=1e-12",
                           f"train.init_from={tmp_path / 'straight' / 'refiner'}")
    fresh = _train_refiner(cache_dir, None, tmp_path / "fresh", 1, *flow, "train.lr=1e-12")
    assert all(torch.allclose(stage[k], straight[k], atol=1e-6) for k in straight)
    assert not all(torch.allclose(fresh[k], straight[k], atol=1e-6) for k in straight)


def test_training_reads_the_latent_target(tmp_path):
    """`model.target=latent` trains on the cache's latents (`build_cache --latents`): one step moves the weights
    otherwise than the z_hat target, the exported config records it, and a cache without latents is refused."""
    from factories import tiny_token_cache

    cache, plain = tiny_token_cache(tmp_path / "cache", latents=True), tiny_token_cache(tmp_path / "plain")
    flow = ["model.mode=flow", "data.generator_dir=null"]
    z_hat = _train_refiner(cache, None, tmp_path / "z_hat", 1, *flow)
    latent = _train_refiner(cache, None, tmp_path / "latent", 1, *flow, "model.target=latent")
    assert not all(torch.allclose(z_hat[k], latent[k]) for k in z_hat)
    assert LatentRefiner.from_pretrained(tmp_path / "latent" / "refiner").config.target == "latent"
    assert all(torch.equal(z_hat[k], v) for k, v in _train_refiner(plain, None, tmp_path / "p", 1, *flow).items())
    with fresh_accelerate_state(), pytest.raises(ValueError, match="model.target=latent learns the clips' unquantized "
                                                                   "latents, but the token cache .* has none"):
        refiner_main(["--set", *TINY_REFINER, f"data.token_cache_dir={plain}", *flow, "model.target=latent",
                      f"train.output_dir={tmp_path / 'refused'}"])


def test_training_reads_the_sigma_location(cache_dir, tmp_path):
    """`model.sigma_location` reaches the loss: one step at a high location moves the weights otherwise."""
    flow = ["model.mode=flow", "data.generator_dir=null"]
    centred = _train_refiner(cache_dir, None, tmp_path / "centred", 1, *flow)
    again = _train_refiner(cache_dir, None, tmp_path / "again", 1, *flow, "model.sigma_location=0")
    high = _train_refiner(cache_dir, None, tmp_path / "high", 1, *flow, "model.sigma_location=4")
    assert all(torch.equal(centred[k], again[k]) for k in centred)
    assert not all(torch.allclose(centred[k], high[k]) for k in centred)


def test_the_pipeline_decodes_the_flow_refiners_draw():
    components = get_dummy_components()
    torch.manual_seed(0)
    refiner = LatentRefiner(latent_channels=4, width=16, depth=1, text_dim=16, text_heads=2, keep_levels=1,
                            mode="flow", sample_steps=3)
    torch.nn.init.normal_(refiner.out[-1].weight, std=0.1)
    pipe = PyraTokT2VPipeline(**components, refiner=refiner)
    pipe.set_progress_bar_config(disable=True)
    refined = pipe("a red circle", generator=gens(3), output_type="latent", **SMALL).frames
    after_sampling = gens(3)
    plain = pipe("a red circle", generator=after_sampling, output_type="latent", use_refiner=False, **SMALL).frames
    assert all(torch.equal(a, b) for a, b in zip(refined.bits, plain.bits))  # the same draw of the pyramid
    coarse = pipe.vae.quantizer.reconstruct(plain.bits[:1], plain.latent_grid)
    torch.testing.assert_close(refiner.condition(plain, pipe.vae.quantizer), coarse)
    embeds, mask = pipe.encode_prompt("a red circle")[:2]
    # the draw goes on from the call's generators where sampling left them
    torch.testing.assert_close(refined.latent, refiner.refine(coarse, embeds, mask, generator=after_sampling))
    other = pipe("a red circle", generator=gens(4), output_type="latent", **SMALL).frames
    assert not torch.allclose(other.latent, refined.latent)


def test_the_call_sets_the_refiners_guidance():
    """`refiner_guidance_scale` reaches the flow refiner's draw: the config's scale by default, another one
    draws as the same refiner configured with it; a bad value is refused before any model runs."""
    torch.manual_seed(0)
    refiner = LatentRefiner(latent_channels=4, width=16, depth=1, text_dim=16, text_heads=2, keep_levels=1,
                            mode="flow", sample_steps=3, guidance_scale=4.0)
    torch.nn.init.normal_(refiner.out[-1].weight, std=0.1)
    pipe = PyraTokT2VPipeline(**get_dummy_components(), refiner=refiner)
    pipe.set_progress_bar_config(disable=True)

    def draw(**kwargs):
        return pipe("a red circle", generator=gens(3), output_type="latent", **kwargs, **SMALL).frames.latent

    default, lower = draw(), draw(refiner_guidance_scale=2.0)
    torch.testing.assert_close(draw(refiner_guidance_scale=4.0), default)
    assert not torch.allclose(lower, default)
    refiner.register_to_config(guidance_scale=2.0)  # the same weights, configured at 2
    torch.testing.assert_close(draw(), lower)
    for bad in (float("nan"), -1.0, "3"):
        with pytest.raises(ValueError, match="refiner_guidance_scale must be None or a finite number >= 0"):
            pipe("a red circle", refiner_guidance_scale=bad, **SMALL)
        with pytest.raises(ValueError, match="guidance_scale must be None or a finite number >= 0"):
            refiner.refine(torch.zeros(1, 4, 1, 2, 2), torch.zeros(1, 1, 16), guidance_scale=bad)
