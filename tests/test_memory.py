"""Tests for generator.memory, the pipeline's up-front memory estimate: it bounds the tensor bytes a real call
holds at once (tiled and untiled decode, several tiles, clips longer than the frames it decodes on the meta
device), and the pipeline refuses exactly the requests it puts past the memory available."""
from __future__ import annotations

import pytest
import torch
from test_pipeline import gens, get_dummy_components, make_pipe

import pipelines.pipeline_checks as checks
from generator.memory import LiveBytes, sampling_memory
from generator.refiner import LatentRefiner
from pipelines.pipeline_pyratok_t2v import PyraTokT2VPipeline
from pyratok.tiling import TilingConfig
from pyratok.tokenizer import PyraTokTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
CLIP = dict(num_frames=21, height=48, width=64)  # latent (6, 6, 8): longer than the 3 latent frames decoded on meta
SMALL_TILES = dict(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24,
                   tile_sample_stride_width=24)  # 2 x 3 tiles per video


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


def tracked_peak(pipe, **kwargs) -> int:
    with LiveBytes("cpu") as live:  # the estimate's own meta tensors are not counted
        pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs)
    return live.peak


@pytest.mark.parametrize("tiles, output_type, videos", [(None, "pil", 1), (SMALL_TILES, "pt", 2), (None, "np", 2)])
def test_estimate_bounds_the_tensors_a_call_holds(pipe, tiles, output_type, videos):
    if tiles:
        pipe.enable_tiling(**tiles)
    try:
        peak = tracked_peak(pipe, output_type=output_type, num_videos_per_prompt=videos, **CLIP)
        estimate = checks.estimate_memory(pipe, videos, *CLIP.values(), True, output_type).working
    finally:
        pipe.disable_tiling()
    assert peak <= estimate <= 1.25 * peak, (peak, estimate)


def test_the_refiners_draw_is_counted():
    """A flow refiner wide enough that its guided draw is the call's peak: the estimate bounds the tensors the
    call holds only because it counts the refine phase (without the refiner the peak is the decode's)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        refiner = LatentRefiner(latent_channels=4, width=512, depth=1, text_dim=16, text_heads=2, keep_levels=1,
                                mode="flow", sample_steps=2, guidance_scale=3.0).eval()
    pipe = PyraTokT2VPipeline(**get_dummy_components(), refiner=refiner)
    pipe.set_progress_bar_config(disable=True)
    peak, plain = tracked_peak(pipe, **CLIP), tracked_peak(pipe, use_refiner=False, **CLIP)
    estimate = checks.estimate_memory(pipe, 1, *CLIP.values(), True, "pil")
    without = checks.estimate_memory(pipe, 1, *CLIP.values(), True, "pil", use_refiner=False)
    assert peak <= estimate.working <= 1.25 * peak, (peak, estimate)
    assert estimate.refine == estimate.working > estimate.decode  # the refine phase is the peak here
    assert without.refine == 0 and without.working < peak and plain <= without.working, (plain, without)
    # a call's own refiner guidance: at 1 the draw runs without the null-text batch, and the estimate follows
    unguided = tracked_peak(pipe, refiner_guidance_scale=1.0, **CLIP)
    one = checks.estimate_memory(pipe, 1, *CLIP.values(), True, "pil", refiner_guidance_scale=1.0)
    assert unguided <= one.working < estimate.working and one.refine < estimate.refine, (unguided, one)
    assert checks.estimate_memory(pipe, 1, *CLIP.values(), True, "pil", refiner_guidance_scale=6.0) == estimate


def test_decode_on_few_frames_matches_the_whole_clip_on_meta(pipe):
    """The decode runs on the meta device for 3 latent frames of one group of tiles and adds what grows with
    the clip: tiled, that is the whole clip's decode (plus the earlier phases' leftovers); untiled, a bound."""
    grid = pipe.vae.latent_grid(33, 32, 48)  # 9 latent frames; 2 tiles
    for tiling in (None, TilingConfig(**SMALL_TILES)):
        estimate = sampling_memory(pipe.transformer.generator_config(), pipe.vae.cfg, grid, 1, tiling=tiling,
                                   output_type="pt").decode
        with torch.device("meta"):
            vae = PyraTokTokenizer.from_config_dataclass(pipe.vae.cfg).eval()
        vae.tiling = tiling
        with LiveBytes("meta") as live, torch.no_grad():
            video = vae.decode_latent(torch.empty(1, pipe.vae.cfg.backbone.z_dim, *grid, device="meta"))
            scaled = video.clone()  # the post-processing's copy ("pt")
        del video, scaled
        assert live.peak <= estimate <= (1.05 if tiling else 1.25) * live.peak, (tiling, live.peak, estimate)


def test_refused_exactly_past_the_estimate(pipe, monkeypatch):
    need = checks.estimate_memory(pipe, 1, *CLIP.values(), True, "pil").working
    monkeypatch.setattr(checks, "available_bytes", lambda device: need - 1)
    with pytest.raises(ValueError, match=r"need about 0\.\d\d GB beyond the loaded weights"):
        pipe("a red circle", **CLIP)
    monkeypatch.setattr(checks, "available_bytes", lambda device: need)
    assert len(pipe("a red circle", generator=gens(0), **CLIP).frames) == 1
