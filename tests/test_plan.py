"""Tests for generator.plan: costs counted on the meta device match the real model and scale as they should."""
from __future__ import annotations

import pytest
import torch

from generator import GeneratorConfig, PyraTokGenerator
from generator.plan import STRATEGIES, memory_per_gpu, model_cost, parse_clip, report
from generator.config import GeneratorTrainConfig
from pyratok.pyramid import level_grids
from pyratok.tokenizer import TokenizerConfig

STRIDES = [(8, 8, 8), (4, 4, 4), (2, 2, 2), (1, 1, 1)]
CFG = GeneratorConfig(width=32, depth=2, heads=4, num_levels=4)


def test_meta_cost_counts_the_real_model():
    grids = level_grids((5, 16, 16), STRIDES)
    cost = model_cost(CFG, grids, torch.float32, text_len=8)
    assert cost.params == sum(p.numel() for p in PyraTokGenerator.from_generator_config(CFG).parameters())
    assert cost.tokens == [t * h * w for t, h, w in grids]
    assert cost.train_flops > 6 * cost.params * sum(cost.tokens) * 0.5  # at least the dense layers' share
    assert len(cost.saved_per_block) == 2 and all(b > 0 for b in cost.saved_per_block)
    assert cost.activation_bytes(checkpointing=True) < cost.activation_bytes(checkpointing=False)


def test_activations_grow_linearly_and_attention_flops_quadratically():
    small = model_cost(CFG, level_grids((5, 16, 16), STRIDES), torch.float32)
    big = model_cost(CFG, level_grids((5, 32, 32), STRIDES), torch.float32)
    tokens = sum(big.tokens) / sum(small.tokens)
    assert big.activation_bytes(False) / small.activation_bytes(False) < 1.2 * tokens  # no N x N anywhere
    assert big.train_flops / small.train_flops > 1.2 * tokens  # attention is quadratic in compute


def test_strategies_split_what_they_should():
    cost = model_cost(CFG, level_grids((5, 16, 16), STRIDES), torch.bfloat16)
    m = {s: memory_per_gpu(cost, s, 8, 2, 4, False, True) for s in STRATEGIES}
    assert m["ddp"]["optimizer"] == 8 * cost.params and m["zero2"]["params"] == 2 * cost.params
    assert m["zero3"]["params"] == 2 * cost.params / 8
    assert m["zero3+sp"]["activations"] == m["zero3"]["activations"] / 4
    assert m["ddp"]["total"] > m["zero2"]["total"] > m["zero3"]["total"] > m["zero3+sp"]["total"]
    with pytest.raises(ValueError, match="degree 3 must divide the GPU count 8"):
        memory_per_gpu(cost, "zero3+sp", 8, 1, 3, False, True)


def test_report_and_clip_errors():
    tokenizer = TokenizerConfig()
    tokenizer.quantizer.level_strides = STRIDES
    text = report(GeneratorTrainConfig(model=CFG), tokenizer, (17, 128, 128), 8, 0.001, 1, 2)
    assert "zero3+sp2" in text and text.rstrip().endswith("no")  # 1 MB GPUs fit nothing
    with pytest.raises(ValueError, match="'17x128'"):
        parse_clip("17x128")


def test_plan_gives_the_pipelines_sampling_estimate(tmp_path, capsys):
    """`python -m generator.plan --model DIR` counts sampling from the saved configs exactly as the pipeline's
    up-front check counts it from the loaded components."""
    from test_pipeline import get_dummy_components

    from generator.memory import sampling_memory
    from generator.plan import main, pipeline_configs
    from generator.refiner import LatentRefiner
    from pipelines.pipeline_checks import estimate_memory
    from pipelines.pipeline_pyratok_t2v import PyraTokT2VPipeline
    from pyratok.tiling import TilingConfig

    refiner = LatentRefiner(latent_channels=4, width=16, depth=1, text_dim=16, text_heads=2, keep_levels=1,
                            mode="flow", sample_steps=2).eval()  # the shipped model has one
    pipe = PyraTokT2VPipeline(**get_dummy_components(), refiner=refiner)
    pipe.save_pretrained(tmp_path)
    model_cfg, tokenizer, text_encoder, refiner = pipeline_configs(tmp_path)
    assert refiner["width"] == 16
    for tiling in (None, TilingConfig()):
        pipe.vae.tiling = tiling
        planned = sampling_memory(model_cfg, tokenizer, pipe.vae.latent_grid(9, 32, 32), 1, tiling=tiling,
                                  text_encoder=text_encoder, refiner=refiner)
        assert planned == estimate_memory(pipe, 1, 9, 32, 32, True, "pil") and planned.refine > 0
    assert main(["--model", str(tmp_path), "--clip", "9x32x32"]) == 0
    out = capsys.readouterr().out
    assert "sampling one video of 9x32x32" in out and out.rstrip().splitlines()[-1].startswith("tiled")
