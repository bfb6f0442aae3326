"""Tests for generator.build_cache: parts split across processes, resume, settings checks, --n with --folder.

The 2-process run goes through `accelerate launch` (gloo on CPU) and must equal the 1-process cache.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from factories import tiny_tokenizer
from safetensors.torch import load_file

from generator.build_cache import build_parser, main, make_parts
from generator.contrast import swap_word
from generator.token_cache import TokenCacheDataset, TokenCacheWriter
from pyratok.data.shapes import SHAPES
from pyratok.data.shapes_judge import caption_in_split

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--n", "10", "--shard-size", "4", "--batch-size", "2", "--num-frames", "5", "--size", "16"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    tiny_tokenizer(text_dim=384).save_pretrained(folder)  # 384: the default MiniLM text encoder
    return folder


@pytest.fixture(scope="module")
def one_process(tokenizer_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "one"
    assert main(["--tokenizer", str(tokenizer_dir), "--out", str(out), *SMALL]) == 0
    return out


def contents(cache: Path) -> dict:
    index = json.loads((cache / "index.json").read_text())
    return {"index": index, **{s["file"]: load_file(str(cache / s["file"])) for s in index["shards"]}}


def assert_same(a: Path, b: Path) -> None:
    ca, cb = contents(a), contents(b)
    assert ca.keys() == cb.keys() and ca["index"] == cb["index"]
    for name in ca:
        if name != "index":
            assert ca[name].keys() == cb[name].keys()
            assert all(torch.equal(ca[name][k], cb[name][k]) for k in ca[name]), name


def test_parts_make_one_cache(one_process):
    index = json.loads((one_process / "index.json").read_text())
    assert [s["num_samples"] for s in index["shards"]] == [4, 4, 2] and index["num_samples"] == 10
    ds = TokenCacheDataset(one_process)
    assert len(ds) == 10 and ds.has_text and ds.load_quantizer() is not None
    assert [s["file"] for s in index["shards"]] == [f"parts/part_{k:05d}/shard_00000.safetensors" for k in range(3)]
    assert not list(one_process.glob(".*")) and not list(one_process.glob("parts/.*"))  # no temporaries left


def test_resume_writes_only_missing_parts(one_process, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "resumed"
    (out / "parts").mkdir(parents=True)
    shutil.copy2(one_process / "build_settings.json", out)
    for name in ("part_00000", "part_00002"):  # a run stopped after parts 0 and 2 ...
        shutil.copytree(one_process / "parts" / name, out / "parts" / name)
    (out / "parts" / ".part_00001.123").mkdir()  # ... while making part 1
    capsys.readouterr()
    assert main(["--tokenizer", str(tokenizer_dir), "--out", str(out), *SMALL]) == 0
    said = capsys.readouterr()
    assert json.loads(said.out.splitlines()[-1])["written"] == 1 and "4/4" in said.err  # the bar's total: 4 samples
    assert_same(out, one_process)
    assert not list((out / "parts").glob(".*"))  # the interrupted run's temporary is gone
    with pytest.raises(ValueError, match="made with other settings .*seed: 0 != 1"):
        main(["--tokenizer", str(tokenizer_dir), "--out", str(out), *SMALL, "--seed", "1"])


def test_n_limits_a_folder(tokenizer_dir, tmp_path):
    from pipelines.cli import main as cli_main

    assert cli_main(["shapes", "--n", "5", "--out", str(tmp_path / "clips"), "--num-frames", "5", "--height", "16",
                     "--width", "16"]) == 0
    out = tmp_path / "cache"
    assert main(["--tokenizer", str(tokenizer_dir), "--out", str(out), "--folder", str(tmp_path / "clips"),
                 "--n", "3", "--shard-size", "2", "--batch-size", "2", "--num-frames", "5", "--size", "16"]) == 0
    assert len(TokenCacheDataset(out)) == 3


def test_two_objects_follow_the_single_object_clips(tokenizer_dir, one_process, tmp_path):
    """--two-objects N appends N two-object clips (captions naming both) after the --n single-object ones."""
    from generator.build_cache import shapes_dataset

    data = shapes_dataset("train", 3, 2, num_frames=5, size=16, seed=0)
    captions = [data[i]["caption"] for i in range(len(data))]
    assert len(captions) == 5 and [" and " in c for c in captions] == [False] * 3 + [True] * 2
    out = tmp_path / "pairs"
    small = list(SMALL)
    small[small.index("--n") + 1] = "6"
    assert main(["--tokenizer", str(tokenizer_dir), "--out", str(out), *small, "--two-objects", "4"]) == 0
    assert len(TokenCacheDataset(out)) == 10
    assert json.loads((out / "build_settings.json").read_text())["two_objects"] == 4
    assert "two_objects" not in json.loads((one_process / "build_settings.json").read_text())  # old caches resume
    first = contents(out)  # its first shard (4 clips) is the single-object cache's first shard, text and tokens
    single = contents(one_process)
    a, b = first[first["index"]["shards"][0]["file"]], single[single["index"]["shards"][0]["file"]]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="--two-objects -1"):
        shapes_dataset("train", 3, -1, num_frames=5, size=16, seed=0)
    apart = shapes_dataset("train", 3, 2, num_frames=5, size=16, seed=0, min_gap=1)  # the pairs kept apart
    assert [apart[i]["caption"] for i in range(5)] == captions and apart.datasets[1].min_gap == 1
    with pytest.raises(ValueError, match="--two-objects-apart 4.0 places two-object clips"):
        main(["--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "y"), *small, "--two-objects-apart", "4"])
    with pytest.raises(ValueError, match="does not apply to --folder"):
        main(["--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "x"), "--folder", str(tmp_path),
              "--two-objects", "2"])


def test_contrast_words_store_swapped_captions_beside_the_same_tokens(tokenizer_dir, one_process, tmp_path):
    """--contrast-words: the cache also holds each caption with one word swapped (generator.contrast);
    tokens and true captions stay those of the plain cache."""
    out = tmp_path / "swapped"
    assert main(["--tokenizer", str(tokenizer_dir), "--out", str(out), *SMALL,
                 "--contrast-words", "circle,square,triangle"]) == 0
    cache, plain = TokenCacheDataset(out), TokenCacheDataset(one_process)
    assert cache.has_negatives and not plain.has_negatives
    assert json.loads((out / "build_settings.json").read_text())["contrast_words"] == ["circle,square,triangle"]
    for i in range(len(plain)):
        a, b = cache[i], plain[i]
        assert all(torch.equal(x, y) for x, y in zip(a["indices"], b["indices"]))
        assert torch.equal(a["text_states"], b["text_states"])
        assert not torch.equal(a["negative_text_states"], a["text_states"])
    with pytest.raises(ValueError, match="not --shards"):
        main(["--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "x"), "--shards", str(tmp_path),
              "--contrast-words", "a,b"])


def test_latents_store_each_clips_unquantized_latent_beside_the_same_tokens(tokenizer_dir, one_process, tmp_path):
    """--latents: the cache also holds the latent each pyramid quantizes (the encoder's mean, float16), for a
    refiner that draws it; tokens and captions stay those of the plain cache."""
    from pyratok.data.shapes import ShapesDataset
    from pyratok.tokenizer import PyraTokTokenizer

    out = tmp_path / "latents"
    assert main(["--tokenizer", str(tokenizer_dir), "--out", str(out), *SMALL, "--latents"]) == 0
    cache, plain = TokenCacheDataset(out), TokenCacheDataset(one_process)
    assert cache.has_latents and not plain.has_latents
    assert json.loads((out / "build_settings.json").read_text())["latents"] is True
    assert "latents" not in json.loads((one_process / "build_settings.json").read_text())  # older caches resume
    tokenizer = PyraTokTokenizer.from_pretrained(tokenizer_dir).eval()
    clips = ShapesDataset(split="train", length=10, num_frames=5, height=16, width=16, seed=0)
    for i in (0, 7):
        a, b = cache[i], plain[i]
        assert all(torch.equal(x, y) for x, y in zip(a["indices"], b["indices"]))
        assert torch.equal(a["text_states"], b["text_states"])
        z = tokenizer.encode_latent(clips[i]["video"][None])[0][0]
        assert a["latent"].dtype == torch.float16 and torch.allclose(a["latent"].float(), z, atol=2e-3 * z.abs().max().item())
    batch = cache.collate([cache[0], cache[1]])
    assert batch["latent"].shape == (2, *z.shape) and plain.collate([plain[0]])["latent"] is None
    pyramid = tokenizer.encode(clips[0]["video"][None])
    with pytest.raises(ValueError, match=r"latents must be \(b, c, t, h, w\) = \(1, 4, "):
        TokenCacheWriter(tmp_path / "refused").add(pyramid, latents=z[None, :, :1])  # one latent frame too few


def test_swapped_shapes_captions_never_name_a_heldout_pair():
    """A swapped caption is trained on (as a negative): on Shapes it keeps to the split's colour x shape pairs,
    while without that rule about one clip in ten would name a held-out pair."""
    args = build_parser().parse_args(["--tokenizer", "unused", "--out", "unused", "--n", "60", "--two-objects", "30",
                                      "--num-frames", "2", "--size", "16", "--contrast-words", "circle,square,triangle"])
    samples = [s for part in make_parts(args) for s in part]
    assert len(samples) == 90
    for s in samples:
        assert caption_in_split(s["negative_prompt"]), s["negative_prompt"]
        changed = [(a, b) for a, b in zip(s["caption"].split(), s["negative_prompt"].split()) if a != b]
        assert len(changed) == 1 and {a.strip(",") for a in changed[0]} <= set(SHAPES), changed
    free = [swap_word(s["caption"], [SHAPES], torch.Generator().manual_seed(k)) for k, s in enumerate(samples)]
    assert not all(caption_in_split(c) for c in free)


@pytest.mark.slow
def test_two_processes_equal_one(one_process, tokenizer_dir, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): each makes its own parts; the cache equals one process's."""
    out = tmp_path / "two"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "generator.build_cache",
           "--tokenizer", str(tokenizer_dir), "--out", str(out), *SMALL]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["written"] == 2  # process 0: parts 0 and 2
    assert_same(out, one_process)


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_word_reliance_tells_a_generator_that_reads_the_prompt_from_one_that_does_not(one_process, capsys):
    from generator import PyraTokGenerator
    from pyratok.data.shapes import SHAPES
    from pyratok.text_encoder import TextEncoder

    bench = _bench("word_reliance")
    assert bench.swap_word("a red square moving left", [SHAPES]) == "a red triangle moving left"  # the next shape
    assert bench.swap_word("a red triangle moving left", [SHAPES]) == "a red circle moving left"
    with pytest.raises(ValueError, match="no word of the contrast groups"):
        bench.swap_word("a red blob", [SHAPES])
    rows, captions = bench.shapes_captions(one_process, 3)
    assert len(rows) == 3 and not any(" and " in c for c in captions)
    data, encoder = TokenCacheDataset(one_process), TextEncoder.from_pretrained()
    batch, quantizer = data.collate([data[i] for i in rows]), data.load_quantizer()
    bench.check_captions(batch, encoder, captions)
    with pytest.raises(ValueError, match="not the captions"):
        bench.check_captions(batch, encoder, captions[::-1])
    torch.manual_seed(0)
    model = PyraTokGenerator(latent_channels=4, num_bits=16, num_levels=3, text_dim=384, width=32, depth=1,
                             heads=2).eval()
    swapped = [bench.swap_word(c, [SHAPES]) for c in captions]

    def rise():
        true, other = (bench.bit_losses(model, quantizer, batch, encoder, caps) for caps in (captions, swapped))
        return max(float((a - b).abs().max()) for a, b in zip(true, other))

    assert rise() > 1e-4  # a random generator reads its prompt
    with torch.no_grad():
        model.transformer.text_proj[-1].weight.zero_()
        model.transformer.text_proj[-1].bias.zero_()
    assert rise() == 0.0  # text cut off: swapping a word changes nothing
    # the finest level split by token: each region's mean, weighted by its tokens, is the level's mean
    grid = batch["bits"][-1].shape[1:4]
    regions = bench.token_regions(one_process, rows, grid)
    assert regions.shape == batch["bits"][-1].shape[:4]
    assert all((r == 0).any() and (r > 0).any() for r in regions)  # each clip: background and its object
    assert not torch.equal(regions, bench.token_regions(one_process, rows[::-1], grid))  # from the clips themselves
    finest = bench.teacher_forced_logits(model, quantizer, batch, encoder, captions)[-1]
    parts = bench.region_losses(finest, batch["bits"][-1], regions)
    weighted = sum(nats * (regions == bench.REGIONS.index(name)).sum() for name, nats in parts.items())
    torch.testing.assert_close(weighted / regions.numel(), bench.bit_losses(model, quantizer, batch, encoder, captions)[-1])
    folder = one_process.parent / "generator"
    model.save_pretrained(folder)
    assert bench.main(["--cache", str(one_process), "--generator", str(folder), "--n", "3"]) == 0
    printed = capsys.readouterr().out
    assert "shape swapped" in printed and "colour swapped" in printed and "rise +0.000" in printed
    assert "boundary" in printed and "background" in printed and "bits given" not in printed
    # a FinestConv that draws in passes: the finest level's loss with a share of its bits given reads them
    torch.manual_seed(0)
    passes = PyraTokGenerator(latent_channels=4, num_bits=16, num_levels=3, text_dim=384, width=32, depth=1,
                              heads=2, finest_head="conv", finest_conv_width=16, finest_conv_blocks=1,
                              finest_conv_passes=8).eval()
    blind = bench.given_region_losses(passes, quantizer, batch, encoder, captions, regions, 0.75)
    with torch.no_grad():
        torch.nn.init.normal_(passes.finest_conv.given.conv.weight)
    reads = bench.given_region_losses(passes, quantizer, batch, encoder, captions, regions, 0.75)
    assert all(not torch.allclose(blind[name], reads[name]) for name in blind)
    passes.save_pretrained(one_process.parent / "passes")
    assert bench.main(["--cache", str(one_process), "--generator", str(one_process.parent / "passes"), "--n", "3"]) == 0
    assert "75% of its bits given" in capsys.readouterr().out


def test_word_reliance_trades_the_two_objects_motions(tokenizer_dir, one_process, tmp_path, capsys):
    from generator import PyraTokGenerator
    from pyratok.data.shapes_judge import parse_objects

    bench = _bench("word_reliance")
    two = "a red circle moving left and a blue square growing"
    assert bench.canonical(two, trade_motions=True) == "a red circle growing and a blue square moving left"
    assert bench.canonical("a red circle moves to the left") == "a red circle moving left"
    with pytest.raises(ValueError, match="move differently"):
        bench.canonical("a red circle moving left and a blue square moving left", trade_motions=True)
    out = tmp_path / "pairs"
    small = list(SMALL)
    small[small.index("--n") + 1] = "3"
    assert main(["--tokenizer", str(tokenizer_dir), "--out", str(out), *small, "--two-objects", "6"]) == 0
    rows, captions = bench.shapes_captions(out, 2, two_objects=True)
    assert len(rows) == 2 and min(rows) >= 3  # after the single-object clips
    assert all(len(o) == 2 and o[0][2] != o[1][2] for o in map(parse_objects, captions))
    torch.manual_seed(0)
    model = PyraTokGenerator(latent_channels=4, num_bits=16, num_levels=3, text_dim=384, width=32, depth=1, heads=2)
    model.save_pretrained(tmp_path / "generator")
    assert bench.main(["--cache", str(out), "--generator", str(tmp_path / "generator"), "--n", "2",
                       "--two-objects", "2"]) == 0
    printed = capsys.readouterr().out
    assert "2 two-object clips whose objects move differently" in printed and "motions traded" in printed
    assert "phrases hidden" not in printed  # a generator without phrase tokens has none to hide
    torch.manual_seed(0)
    PyraTokGenerator(latent_channels=4, num_bits=16, num_levels=3, text_dim=384, width=32, depth=1, heads=2,
                     phrase_tokens=True).save_pretrained(tmp_path / "phrases")
    assert bench.main(["--cache", str(out), "--generator", str(tmp_path / "phrases"), "--n", "2",
                       "--two-objects", "2"]) == 0
    rows = {line[:15].strip(): line[15:].split("rise")[0] for line in capsys.readouterr().out.splitlines()}
    assert rows["phrases hidden"] != rows["canonical"], rows  # it reads the phrase vectors
    with pytest.raises(ValueError, match="holds no two-object clips"):
        bench.main(["--cache", str(one_process), "--generator", str(tmp_path / "generator"), "--two-objects", "1"])
    with pytest.raises(ValueError, match="got -1"):
        bench.main(["--cache", str(out), "--generator", str(tmp_path / "generator"), "--two-objects", "-1"])


def test_edge_probe_learns_the_finest_first_group_and_reports_on_clips_it_never_saw(one_process, capsys):
    bench = _bench("edge_probe")
    with pytest.raises(ValueError, match="training cache"):
        bench.main(["--cache", str(one_process), "--heldout", str(one_process)])
    with pytest.raises(ValueError, match="--steps must be >= 1, got 0"):
        bench.main(["--cache", str(one_process), "--heldout", str(one_process.parent), "--steps", "0"])
    before = bench.heldout_nats(bench.train_probe(one_process, steps=0), one_process, 5)
    after = bench.heldout_nats(bench.train_probe(one_process, steps=40), one_process, 5)
    assert set(before) == set(after) and "background" in after
    assert sum(after.values()) < sum(before.values()) - 0.05, (before, after)  # it learns (here on its own clips)
    whole = bench.train_probe(one_process, steps=0, bits=16)  # every finest bit learned, the first group reported
    assert whole.out.out_channels == 16 and set(bench.heldout_nats(whole, one_process, 5)) == set(before)
    with pytest.raises(ValueError, match=r"--bits must be in \[8, 16\].*got 17"):
        bench.train_probe(one_process, steps=0, bits=17)
    twin = one_process.parent / "twin"  # the same clips under another name: main runs end to end
    shutil.copytree(one_process, twin)
    assert bench.main(["--cache", str(one_process), "--heldout", str(twin), "--steps", "2", "--n", "3"]) == 0
    assert "background" in capsys.readouterr().out


def test_prior_regions_scores_the_tokenizers_own_prior_by_region(tokenizer_dir, one_process, monkeypatch, capsys):
    from pyratok import PyraTokTokenizer
    from pyratok.text_encoder import TextEncoder

    bench = _bench("prior_regions")
    tokenizer = PyraTokTokenizer.from_pretrained(tokenizer_dir).eval()
    encoder = TextEncoder.from_pretrained(None)
    result = bench.measure(tokenizer, one_process, 3, encoder, batch_size=2)
    tokens = sum(result["tokens"].values())
    assert set(result["regions"]) >= {"background", "boundary"} and len(result["levels"]) == 3
    finest = sum(groups.mean() * result["tokens"][name] for name, groups in result["regions"].items()) / tokens
    torch.testing.assert_close(finest, result["levels"][-1])  # the regions split the finest level's loss
    assert not torch.allclose(result["levels"], torch.full((3,), math.log(2)))
    prior = tokenizer.prior.forward  # a prior that says nothing pays ln 2 a bit: the bench reads the prior
    monkeypatch.setattr(tokenizer.prior, "forward", lambda *a, **k: [torch.zeros_like(x) for x in prior(*a, **k)])
    blind = bench.measure(tokenizer, one_process, 3, encoder, batch_size=2)
    torch.testing.assert_close(blind["levels"], torch.full((3,), math.log(2)))
    tokenizer.prior = None
    with pytest.raises(ValueError, match="no prior"):
        bench.measure(tokenizer, one_process, 3, encoder)
    assert bench.main(["--cache", str(one_process), "--tokenizer", str(tokenizer_dir), "--n", "3"]) == 0
    assert "boundary" in capsys.readouterr().out
