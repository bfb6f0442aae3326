"""Tests for the generator's token cache and training script: cache round trip, configs, exact
resume, and two-process DDP / DeepSpeed ZeRO-2 runs under `accelerate launch` (CPU, gloo).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from generator import GeneratorTrainConfig, PyraTokGenerator, TokenCacheDataset, build_token_cache
from generator.token_cache import QuantizerEncoder, random_latents
from generator.train import main as train_main, train
from pyratok.config import load_config
from pyratok.lapq import LaPQ, LaPQConfig

from factories import LATENT, FakeTextEncoder, fresh_accelerate_state

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.width=32", "model.depth=1", "model.heads=2", "train.batch_size=2", "train.log_every=1",
        "train.warmup_steps=2"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster on a shared 2-core box
    yield
    torch.set_num_threads(threads)


def test_token_cache_round_trip(cache_dir):
    ds = TokenCacheDataset(cache_dir)
    assert len(ds) == 6 and ds.latent_grid == LATENT and ds.num_bits == 16
    assert sorted(p.name for p in cache_dir.glob("shard_*")) == ["shard_00000.safetensors", "shard_00001.safetensors"]
    quantizer = ds.load_quantizer()
    samples = random_latents(6, 8, LATENT, torch.Generator().manual_seed(0), prompts=["a", "red ball", "two cats"])
    text = FakeTextEncoder()([s["prompt"] for s in samples])
    latents = torch.stack([s["latent"] for s in samples])
    expected = quantizer(latents, text_states=text.hidden_states, text_mask=text.attention_mask).pyramid
    batch = ds.collate([ds[i] for i in range(6)])
    for got, want in zip(batch["bits"], expected.bits):
        assert torch.equal(got, want)
    s = batch["text_states"].shape[1]
    valid = text.attention_mask[:, :s]
    assert torch.equal(batch["text_mask"], valid)
    torch.testing.assert_close(batch["text_states"][valid], text.hidden_states[:, :s][valid], atol=2e-3, rtol=1e-3)
    with pytest.raises(IndexError, match="index 6"):
        ds[6]


def test_cache_without_text(tmp_path):
    quantizer = LaPQ(LaPQConfig(use_text=False))
    samples = [s["latent"] for s in random_latents(3, 8, LATENT, torch.Generator().manual_seed(1))]
    ds = TokenCacheDataset(build_token_cache(QuantizerEncoder(quantizer), None, samples, tmp_path, progress=False))
    batch = ds.collate([ds[0], ds[1]])
    assert batch["text_states"] is None and len(batch["bits"]) == 4
    with pytest.raises(FileNotFoundError, match="no token cache index"):
        TokenCacheDataset(tmp_path / "missing")


def test_cache_from_a_pyratok_tokenizer(tmp_path):
    """Any object with `encode` works; a real (tiny, untrained) PyraTokTokenizer included."""
    tokenizer_mod = pytest.importorskip("pyratok.tokenizer")
    backbone = {"base_dim": 8, "z_dim": 8, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1,
                "temperal_downsample": [False, True, True]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tokenizer = tokenizer_mod.PyraTokTokenizer(backbone_config=backbone, quantizer_config={"hidden_dim": 32},
                                                   prior_config={"depth": 0}).eval()
    videos = torch.rand(3, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    samples = [{"video": v, "prompt": p} for v, p in zip(videos, ["a", "red ball", "two cats"])]
    ds = TokenCacheDataset(build_token_cache(tokenizer, FakeTextEncoder(), samples, tmp_path, batch_size=2,
                                             progress=False))
    text = FakeTextEncoder()(["a", "red ball"])
    with torch.no_grad():
        expected = tokenizer.encode(videos[:2], prompt_embeds=text.hidden_states, prompt_mask=text.attention_mask)
    batch = ds.collate([ds[0], ds[1]])
    assert ds.latent_grid == expected.latent_grid
    for got, want in zip(batch["bits"], expected.bits):
        assert torch.equal(got, want)
    quantizer = ds.load_quantizer()
    for key, value in tokenizer.quantizer.state_dict().items():
        assert torch.equal(quantizer.state_dict()[key], value), key


def test_config_files_are_valid():
    for path in sorted((ROOT / "configs/generator").glob("*.yaml")):
        cfg = load_config(GeneratorTrainConfig, path)
        assert cfg.model.width % cfg.model.heads == 0, path
    base = load_config(GeneratorTrainConfig, ROOT / "configs/generator/base.yaml")
    assert base.model.gradient_checkpointing and base.train.mixed_precision == "bf16"
    conv, pairs = (load_config(GeneratorTrainConfig, ROOT / f"configs/generator/{name}.yaml")
                   for name in ("shapes_parent_conv128", "shapes_parent_conv128_pairs"))
    # stage 2 on more pairs: the stage-1 generator as the default model trains it (one vector per phrase), carried on
    assert pairs.model == dataclasses.replace(conv.model, phrase_tokens=True, word_tokens=False)
    assert pairs.train.init_from == f"{conv.train.output_dir}/generator"
    assert pairs.data.token_cache_dir != conv.data.token_cache_dir
    for path in (ROOT / "configs/deepspeed").glob("*.json"):
        ds = json.loads(path.read_text())
        assert "optimizer" not in ds and ds["train_micro_batch_size_per_gpu"] == "auto"
    for name in ("single", "multi_gpu", "deepspeed_zero2", "deepspeed_zero3"):
        acc = yaml.safe_load((ROOT / f"configs/accelerate/{name}.yaml").read_text())
        assert acc["num_machines"] == 1
        if "deepspeed_config" in acc:
            assert (ROOT / acc["deepspeed_config"]["deepspeed_config_file"]).is_file()
    with pytest.raises(ValueError, match="text_dropout must be in"):
        load_config(GeneratorTrainConfig, None, ["train.text_dropout=1.5"])
    with pytest.raises(ValueError, match="contrast_weight must be a finite number >= 0, got -1.0"):
        load_config(GeneratorTrainConfig, None, ["train.contrast_weight=-1.0"])
    with pytest.raises(ValueError, match="contrast_tau must be a finite number > 0, got 0.0"):
        load_config(GeneratorTrainConfig, None, ["train.contrast_tau=0.0"])
    with pytest.raises(ValueError, match="sequence parallelism"):
        load_config(GeneratorTrainConfig, None, ["train.contrast_weight=0.5", "model.sequence_parallel_size=2"])


def test_contrast_trains_from_a_cache_with_swapped_captions(cache_dir, tmp_path):
    """train.contrast_weight: the loop logs the term and its gap; a cache without swapped captions is refused."""
    from factories import tiny_token_cache

    with pytest.raises(ValueError, match=f"the token cache {cache_dir} has none: build it with --contrast-words"):
        _train_in_process(["--set", *TINY, f"data.token_cache_dir={cache_dir}", f"train.output_dir={tmp_path}",
                           "train.max_steps=1", "train.contrast_weight=0.5"])
    swapped = tiny_token_cache(tmp_path / "cache", negatives=True)
    with fresh_accelerate_state():
        cfg = load_config(GeneratorTrainConfig, None, [*TINY, f"data.token_cache_dir={swapped}", "train.max_steps=2",
                                                       f"train.output_dir={tmp_path / 'run'}", "train.contrast_weight=0.5"])
        trainer, step = train(cfg)
        logs = trainer.last_logs
        trainer.finish()
    assert step == 2 and logs["contrast"] > 0 and "contrast_gap" in logs, logs


def _train_in_process(args: list[str]) -> None:
    with fresh_accelerate_state():
        assert train_main(args) == 0


def _exported(run_dir: Path) -> dict:
    return load_file(str(run_dir / "generator" / "diffusion_pytorch_model.safetensors"))


def test_old_flat_config_loads_with_a_message_per_renamed_key(tmp_path):
    """A config written before the `train` / `data` sections (e.g. runs/gen/train_config.yaml) still loads;
    its `decay_steps` becomes transformers' warmup-stable-decay schedule, annealing linearly to 0."""
    old = {"token_cache_dir": "cache", "max_steps": 10, "warmup_steps": 2, "decay_steps": 4, "cfg_dropout": 0.2,
           "lr": 0.5, "model": {"width": 32}}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    with pytest.warns(UserWarning) as record:
        cfg = load_config(GeneratorTrainConfig, tmp_path / "old.yaml", ["save_every=5"])
    messages = " ".join(str(w.message) for w in record)
    for key in ("token_cache_dir", "max_steps", "warmup_steps", "decay_steps", "cfg_dropout", "lr", "save_every"):
        assert f"'{key}' is renamed" in messages, key
    assert (cfg.data.token_cache_dir, cfg.train.max_steps, cfg.train.text_dropout, cfg.train.save_every) == ("cache", 10, 0.2, 5)
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    sched = get_scheduler(cfg.train.lr_scheduler, opt, num_warmup_steps=2, num_training_steps=10,
                          scheduler_specific_kwargs=cfg.train.lr_scheduler_kwargs)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    assert lrs == pytest.approx([0.0, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.375, 0.25, 0.125])


@pytest.mark.parametrize("accumulate", [1, 2])
def test_resume_matches_an_uninterrupted_run(cache_dir, tmp_path, accumulate):
    """3 batches per epoch; stop after step 2 (mid-epoch), resume to 5: same weights as 5 straight steps
    (with 2 micro-batches a step the resume and the steps straddle epoch ends)."""
    common = [f"data.token_cache_dir={cache_dir}", "train.save_every=2", "train.text_dropout=0.5",
              "train.self_correction_prob=0.1", f"train.gradient_accumulation_steps={accumulate}", *TINY]
    sets = lambda out, steps: sum((["--set", s] for s in [*common, f"train.output_dir={out}", f"train.max_steps={steps}"]), [])  # noqa: E731
    _train_in_process(sets(tmp_path / "straight", 5))
    _train_in_process(sets(tmp_path / "resumed", 2))
    first = _exported(tmp_path / "resumed")
    _train_in_process([*sets(tmp_path / "resumed", 5), "--resume_from_checkpoint", "latest"])
    straight, resumed = _exported(tmp_path / "straight"), _exported(tmp_path / "resumed")
    assert not all(torch.equal(first[k], resumed[k]) for k in first)  # it did train after resuming
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    checkpoints = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]
    assert list((tmp_path / "straight" / "logs").rglob("events.out.tfevents*"))
    model = PyraTokGenerator.from_pretrained(tmp_path / "straight" / "generator")
    assert model.config.width == 32
    ema = load_file(str(tmp_path / "straight" / "generator" / "diffusion_pytorch_model.ema.safetensors"))
    resumed_ema = load_file(str(tmp_path / "resumed" / "generator" / "diffusion_pytorch_model.ema.safetensors"))
    assert all(torch.equal(ema[k], resumed_ema[k]) for k in ema)  # the EMA resumes exactly too
    assert not torch.equal(ema["transformer.head.weight"], straight["transformer.head.weight"])  # an average of the steps' weights


def test_init_from_starts_a_new_stage_from_saved_weights(cache_dir, tmp_path):
    from generator.train import build_model

    _train_in_process(["--set", f"data.token_cache_dir={cache_dir}", f"train.output_dir={tmp_path}", "train.max_steps=2",
                       *TINY])
    sets = [f"data.token_cache_dir={cache_dir}", *TINY]
    dataset = TokenCacheDataset(cache_dir)
    fresh = build_model(load_config(GeneratorTrainConfig, None, sets), dataset).state_dict()
    started = build_model(load_config(GeneratorTrainConfig, None, [*sets, f"train.init_from={tmp_path / 'generator'}"]),
                          dataset).state_dict()
    trained = _exported(tmp_path)  # the raw weights, not the EMA variant
    assert all(torch.equal(started[k], trained[k]) for k in trained)
    assert not all(torch.equal(fresh[k], trained[k]) for k in trained)
    wider = load_config(GeneratorTrainConfig, None, [*sets, "model.width=64", f"train.init_from={tmp_path / 'generator'}"])
    with pytest.raises(ValueError, match="PyraTokGenerator at .* does not match the config"):
        build_model(wider, dataset)


def test_assembled_pipeline_takes_the_ema_weights(cache_dir, tmp_path):
    from pipelines.assemble import main as assemble
    from factories import tiny_tokenizer

    _train_in_process(["--set", f"data.token_cache_dir={cache_dir}", f"train.output_dir={tmp_path}", "train.max_steps=2",
                       *TINY])
    tiny_tokenizer(text_dim=384).save_pretrained(tmp_path / "tok")
    for flags, name in (([], "ema"), (["--raw-weights"], None)):
        assemble(["--tokenizer", str(tmp_path / "tok"), "--generator", str(tmp_path / "generator"),
                  "--out", str(tmp_path / "pipe"), *flags])
        got = load_file(str(tmp_path / "pipe" / "transformer" / "diffusion_pytorch_model.safetensors"))
        want = _exported(tmp_path) if name is None else load_file(
            str(tmp_path / "generator" / "diffusion_pytorch_model.ema.safetensors"))
        assert all(torch.equal(got[k], want[k]) for k in want), name
    assemble(["--tokenizer", str(tmp_path / "tok"), "--generator", str(tmp_path / "generator"),
              "--out", str(tmp_path / "half"), "--raw-weights", "--half"])
    for part in ("vae", "transformer"):
        config = json.loads((tmp_path / "half" / part / "config.json").read_text())
        assert config["_name_or_path"] == f"half/{part}"  # not the training machine's path
        saved = load_file(str(tmp_path / "half" / part / "diffusion_pytorch_model.safetensors"))
        assert {t.dtype for t in saved.values() if t.is_floating_point()} == {torch.float16}, part
    raw = _exported(tmp_path)
    assert all(torch.equal(saved[k], raw[k].half()) for k in raw)  # the transformer's weights, rounded to fp16
    from pipelines.pipeline_pyratok_t2v import PyraTokT2VPipeline

    loaded = PyraTokT2VPipeline.from_pretrained(tmp_path / "half")
    assert {p.dtype for p in loaded.transformer.parameters()} == {torch.float32}  # loads into fp32


def _launch(launch_args: list[str], cache_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    # DeepSpeed JIT-compiles its CPU comm op once: keep the build in a stable temp folder
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(tempfile.gettempdir()) / "pyratok_torch_extensions"))
    sets = [f"data.token_cache_dir={cache_dir}", f"train.output_dir={out}", "train.max_steps=3", "train.save_every=2",
            "train.write_param_checksum=true", *TINY]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch_args, "-m", "generator.train",
           "--config", "configs/generator/tiny.yaml", *sum((["--set", s] for s in sets), []), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _check_two_ranks(result: subprocess.CompletedProcess, out: Path, kind: str) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert f"2 process(es), DistributedType.{kind}" in result.stdout + result.stderr
    sums = [(out / f"param_checksum_rank{r}.txt").read_text() for r in (0, 1)]
    assert sums[0] == sums[1], "ranks ended with different parameters"
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and (out / "generator" / "config.json").is_file()


@pytest.mark.slow
def test_two_process_ddp(cache_dir, tmp_path):
    out = tmp_path / "ddp"
    result = _launch(["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                      "--dynamo_backend", "no"], cache_dir, out)
    _check_two_ranks(result, out, "MULTI_CPU")


@pytest.mark.slow
def test_two_process_deepspeed_zero2(cache_dir, tmp_path):
    out = tmp_path / "zero2"
    result = _launch(["--config_file", "configs/accelerate/deepspeed_zero2.yaml"], cache_dir, out)
    _check_two_ranks(result, out, "DEEPSPEED")
    assert (out / "checkpoints" / "checkpoint-2" / "deepspeed").is_dir()  # DeepSpeed's own layout
    # a resume reads DeepSpeed's files once they pass the weights_only=True check
    again = _launch(["--config_file", "configs/accelerate/deepspeed_zero2.yaml"], cache_dir, out,
                    "--set", "train.max_steps=4", "--resume_from_checkpoint", "latest")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    assert "at step 3" in again.stdout + again.stderr and (out / "checkpoints" / "checkpoint-4").is_dir()
