"""`python -m pyratok.evaluate`: reconstruction metrics, utilization per level, and on Shapes the judged
reconstructions (what a generator on these tokens could show at best)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import FakeTextEncoder, tiny_tokenizer

from pyratok.evaluate import build_eval_data, evaluate, main

pytestmark = pytest.mark.usefixtures("one_thread")


def load_bench(name: str):
    """bench/{name}.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_evaluate_on_shapes_judges_reconstructions(tmp_path):
    model = tiny_tokenizer()
    result = evaluate(model, build_eval_data("shapes", num_clips=3, num_frames=5, size=32, seed=0), batch_size=2,
                      image_path=tmp_path / "recon.png")
    assert result["clips"] == 3 and (tmp_path / "recon.png").is_file()
    faithful = result["reconstruction_faithfulness"]
    assert set(faithful) == {"colour_acc", "shape_acc", "motion_acc"}
    assert all(v in (0.0, 1 / 3, 2 / 3, 1.0) for v in faithful.values())
    assert len(result["levels"]) == 3 and all(0 < s["utilization"] <= 1 for s in result["levels"].values())
    # every PSNR beside the blur at the same compression; the quantized latent against the encoder's
    assert {"blur_psnr", "blur_ssim", "continuous_psnr", "latent_snr"} <= set(result)
    assert 0 < result["ssim"] <= 1 and 0 < result["blur_ssim"] <= 1


def test_evaluate_command_writes_metrics(tmp_path, capsys):
    tiny_tokenizer(text_dim=384).save_pretrained(tmp_path / "tok")  # MiniLM's width, for --captioned
    main(["--checkpoint", str(tmp_path / "tok"), "--data", "heldout", "--num-clips", "2", "--num-frames", "5",
          "--size", "32", "--out", str(tmp_path / "eval"), "--captioned"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "reconstruction_faithfulness" in metrics and "judged" in capsys.readouterr().out
    with pytest.raises(ValueError, match="'nope'"):
        build_eval_data("nope", 1, 5, 32, 0)


def test_finest_bits_bench_keeps_the_first_groups():
    from pyratok.data.shapes import ShapesDataset

    bench = load_bench("finest_bits")
    tokenizer = tiny_tokenizer(text_dim=384)
    items = [ShapesDataset(num_frames=5, height=32, width=32, length=3, seed=1)[i] for i in range(3)]
    video = torch.stack([x["video"] for x in items])
    text = FakeTextEncoder()([x["caption"] for x in items])
    with torch.no_grad():
        pyramid = tokenizer.encode(video, text.hidden_states, text.attention_mask)
        assert torch.allclose(bench.decode_keeping(tokenizer, pyramid, 16), tokenizer.decode(pyramid).clamp(-1, 1),
                              atol=1e-5)
        assert not torch.allclose(bench.decode_keeping(tokenizer, pyramid, 4), tokenizer.decode(pyramid).clamp(-1, 1))
    result = bench.measure(tokenizer, FakeTextEncoder(), items, batch_size=2)
    assert list(result) == [16, 12, 8, 4, 0]  # 16 bits in groups of 4, then none
    assert all(0 <= r["shape"] <= 1 and np.isfinite(r["psnr"]) for r in result.values())


def test_level_oracle_keeping_every_level_is_the_reconstruction(monkeypatch):
    from generator import PyraTokGenerator
    from pyratok.data.shapes import ShapesDataset, video_to_uint8
    from pyratok.data.shapes_judge import judge_video
    from pyratok.evaluate import judged_right

    bench = load_bench("level_oracle")
    tokenizer = tiny_tokenizer(text_dim=384)
    torch.manual_seed(0)
    model = PyraTokGenerator(latent_channels=4, num_bits=16, num_levels=3, text_dim=384, width=32, depth=1,
                             heads=2).eval()
    items = [ShapesDataset(num_frames=5, height=32, width=32, length=4, seed=1)[i] for i in range(4)]
    result = bench.judge_prefixes(tokenizer, model, FakeTextEncoder(), items, batch_size=2)
    assert list(result) == [0, 1, 2, 3]
    with torch.no_grad():  # all three levels kept: nothing is sampled, the tokenizer's own reconstruction
        text = FakeTextEncoder()([x["caption"] for x in items])
        recon = tokenizer.decode(tokenizer.encode(torch.stack([x["video"] for x in items]), text.hidden_states,
                                                  text.attention_mask)).clamp(-1, 1)
    expected = [judged_right(recon[i], x) for i, x in enumerate(items)]
    fills = [judge_video(video_to_uint8(r))["fill_ratio"] for r in recon]
    assert result[3] == {**{a: float(np.mean([e[a] for e in expected])) for a in expected[0]},
                         "fill_ratio": float(np.nanmean([np.nan if f is None else f for f in fills]))}
    # nothing kept: a random generator's samples are not the clips (their colour is not the caption's)
    assert result[0]["colour"] < 1.0
    # --finest-bits: every bit is the plain decode; none kept at k = 3 judges the clip's levels 0..1 alone
    assert bench.judge_prefixes(tokenizer, model, FakeTextEncoder(), items, batch_size=2, finest_bits=16) == result
    judged = []
    monkeypatch.setattr(bench, "judged_right", lambda video, item: judged.append(video) or judged_right(video, item))
    bench.judge_prefixes(tokenizer, model, FakeTextEncoder(), items[:2], batch_size=2, finest_bits=0)
    with torch.no_grad():
        alone = bench.decode_keeping(tokenizer, tokenizer.encode(torch.stack([x["video"] for x in items[:2]]),
                                                                 text.hidden_states[:2], text.attention_mask[:2]), 0)
    assert not torch.allclose(alone, recon[:2], atol=1e-3)  # the finest level matters in this tokenizer
    torch.testing.assert_close(torch.stack(judged[-2:]), alone)  # k = 3, the last two judged
    for bad in ({"finest_bits": 17}, {"finest_bits": -1}, {"finest_bits": 8, "finest_decode": "expected"}):
        with pytest.raises(ValueError, match="finest_bits must be in"):
            bench.judge_prefixes(tokenizer, model, FakeTextEncoder(), items, **bad)
    two_levels = PyraTokGenerator(latent_channels=4, num_bits=16, num_levels=2, text_dim=384, width=32, depth=1,
                                  heads=2)
    with pytest.raises(ValueError, match="tokenizer has 3 levels, the generator 2"):
        bench.judge_prefixes(tokenizer, two_levels, FakeTextEncoder(), items)
    assert bench.judge_prefixes(tokenizer, model, FakeTextEncoder(), items, batch_size=2, keeps=[3]) == {3: result[3]}
    with pytest.raises(ValueError, match=r"levels kept must be in \[0, 3\], got \[4\]"):
        bench.judge_prefixes(tokenizer, model, FakeTextEncoder(), items, keeps=[4])


def test_level_oracle_judges_two_object_clips_per_pair():
    """two_objects: each pair judged as SHAPES.md's two-object check (both right in colour and shape / also in
    motion); with every level kept, the tokenizer's own reconstruction judged so."""
    from generator import PyraTokGenerator
    from pyratok.data.shapes import ShapesDataset, video_to_uint8
    from pyratok.data.shapes_judge import score_caption

    bench = load_bench("level_oracle")
    tokenizer = tiny_tokenizer(text_dim=384)
    torch.manual_seed(0)
    model = PyraTokGenerator(latent_channels=4, num_bits=16, num_levels=3, text_dim=384, width=32, depth=1,
                             heads=2).eval()
    items = [ShapesDataset(num_frames=5, height=32, width=32, length=3, seed=1, num_objects=2)[i] for i in range(3)]
    result = bench.judge_prefixes(tokenizer, model, FakeTextEncoder(), items, batch_size=2, keeps=[0, 3],
                                  two_objects=True)
    with torch.no_grad():
        text = FakeTextEncoder()([x["caption"] for x in items])
        recon = tokenizer.decode(tokenizer.encode(torch.stack([x["video"] for x in items]), text.hidden_states,
                                                  text.attention_mask)).clamp(-1, 1)
    scored = [score_caption(video_to_uint8(r), x["caption"]) for r, x in zip(recon, items)]
    assert result[3] == {"pair_colour_shape": float(np.mean([s["colour_shape_right"] for s in scored])),
                         "pair_right": float(np.mean([s["all_right"] for s in scored]))}
    assert set(result[0]) == set(bench.PAIR_JUDGED)
    with pytest.raises(ValueError, match="--shape square picks single-object clips"):
        bench.main(["--tokenizer", "missing", "--generator", "missing", "--two-objects", "--shape", "square"])


def test_level_oracle_gives_each_model_the_caption_as_it_reads_it(monkeypatch):
    """A generator that reads the phrase vectors alone beside a refiner that reads the token states: each gets its
    own reading (the refiner given the generator's phrase vectors would read a caption it never learned from)."""
    from generator import PyraTokGenerator
    from generator.refiner import LatentRefiner
    from pyratok.data.shapes import ShapesDataset

    class PhraseTextEncoder(FakeTextEncoder):
        def phrases(self, prompts):  # two phrase vectors per prompt, unlike any token state
            return torch.full((len(prompts), 2, 384), 7.0), torch.ones(len(prompts), 2, dtype=torch.bool)

    bench = load_bench("level_oracle")
    tokenizer = tiny_tokenizer(text_dim=384)
    model = PyraTokGenerator(latent_channels=4, num_bits=16, num_levels=3, text_dim=384, width=32, depth=1, heads=2,
                             phrase_tokens=True, word_tokens=False).eval()
    refiner = LatentRefiner(latent_channels=4, width=16, depth=1, text_heads=2, keep_levels=2, mode="flow",
                            sample_steps=1).eval()
    seen = {}

    def spy(name, method):  # records the text states (the second argument) each model is given
        def call(*args, **kwargs):
            seen[name] = args[1]
            return method(*args, **kwargs)
        return call

    monkeypatch.setattr(model, "generate", spy("generator", model.generate))
    monkeypatch.setattr(refiner, "refine", spy("refiner", refiner.refine))
    items = [ShapesDataset(num_frames=5, height=32, width=32, length=2, seed=1)[i] for i in range(2)]
    result = bench.judge_prefixes(tokenizer, model, PhraseTextEncoder(), items, batch_size=2, refiner=refiner,
                                  keeps=[0])
    tokens = FakeTextEncoder()([x["caption"] for x in items]).hidden_states
    assert seen["generator"].shape[1] == 2 and bool((seen["generator"] == 7.0).all())  # the phrase vectors alone
    torch.testing.assert_close(seen["refiner"], tokens)  # the token states, as the refiner learned
    assert 0 <= result[0]["shape"] <= 1


def test_level_oracle_samples_at_its_temperature_and_decode_and_refuses_a_bad_temperature(monkeypatch):
    from generator import PyraTokGenerator
    from pyratok.data.shapes import ShapesDataset

    bench = load_bench("level_oracle")
    tokenizer = tiny_tokenizer(text_dim=384)
    model = PyraTokGenerator(latent_channels=4, num_bits=16, num_levels=3, text_dim=384, width=32, depth=1,
                             heads=2).eval()
    seen = []
    sample = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **kw: seen.append((kw["temperature"], kw["finest_decode"]))
                        or sample(*a, **kw))
    items = [ShapesDataset(num_frames=5, height=32, width=32, length=2, seed=1)[i] for i in range(2)]
    bench.judge_prefixes(tokenizer, model, FakeTextEncoder(), items, batch_size=2, temperature=0.25,
                         finest_decode="expected")
    assert seen == [(0.25, "expected")] * 4  # one call per number of kept levels, 0 .. 3
    for bad in ("0", "-1", "inf", "nan"):  # refused before any model is loaded
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            bench.main(["--tokenizer", "missing", "--generator", "missing", "--temperature", bad])


def test_balanced_shape_accuracy_gives_one_shape_for_all_a_third():
    """A generator that draws every object as a circle: plain shape accuracy follows the prompt mix (here 60%),
    the balanced one is 1/3, and the confusion shows where the videos went."""
    from pipelines.evaluate_shapes import _accuracies

    def record(shape, judged):
        return {"prompt": f"a red {shape} moving left", "colour": "red", "shape": shape, "motion": "left",
                "judged": {"colour": "red", "shape": judged, "motion": "left", "found": True}}

    records = [record("circle", "circle")] * 6 + [record("square", "circle")] * 2 + [record("triangle", "circle")] * 2
    stats = _accuracies(records)
    assert stats["shape_acc"] == pytest.approx(0.6) and stats["shape_balanced_acc"] == pytest.approx(1 / 3)
    assert stats["shape_confusion"] == {"circle": {"circle": 6}, "square": {"circle": 2}, "triangle": {"circle": 2}}
    drawn = records[:6] + [record("square", "square")] * 2 + [record("triangle", "triangle")] * 2
    assert _accuracies(drawn)["shape_balanced_acc"] == 1.0


def test_refiner_fit_meets_every_refiner_with_the_same_noise(cache_dir):
    from generator.refiner import LatentRefiner
    from generator.token_cache import TokenCacheDataset

    bench = load_bench("refiner_fit")
    dataset = TokenCacheDataset(cache_dir)
    c, e = dataset.load_quantizer("cpu").config.latent_channels, dataset[0]["text_states"].shape[-1]
    torch.manual_seed(0)
    refiner = LatentRefiner(latent_channels=c, width=16, depth=1, text_dim=e, text_heads=2, keep_levels=1,
                            mode="flow").eval()
    first = bench.fit_loss(refiner, dataset, n=4, repeats=2, batch_size=2)
    assert first == bench.fit_loss(refiner, dataset, n=4, repeats=2, batch_size=2)  # the same noise each call
    assert first != bench.fit_loss(refiner, dataset, n=4, repeats=1, batch_size=2)
    with torch.no_grad():
        refiner.out[-1].weight.normal_()  # no longer a zero velocity: another loss on the same noise
    assert bench.fit_loss(refiner, dataset, n=4, repeats=2, batch_size=2) != first
    with pytest.raises(ValueError, match="n and repeats must be >= 1, got 0 and 2"):
        bench.fit_loss(refiner, dataset, n=0, repeats=2)


def test_decoder_bound_judges_the_clips_their_z_hat_their_z_and_a_refiners_draw(monkeypatch):
    """bench/decoder_bound.py: the clips, their decoded z_hat and z, and a refiner given the clip's levels, each
    judged; a refiner that keeps every level and returns its input scores exactly the z_hat row."""
    from generator.refiner import LatentRefiner
    from pyratok.data.shapes import video_to_uint8

    bench = load_bench("decoder_bound")
    tokenizer = tiny_tokenizer(text_dim=384)
    torch.manual_seed(0)
    refiner = LatentRefiner(latent_channels=4, width=16, depth=1, text_dim=384, text_heads=2, keep_levels=3,
                            mode="flow").eval()
    monkeypatch.setattr(refiner, "refine", lambda z_hat, *args, **kwargs: z_hat)
    squares = bench.clips(3, 64, 1, two_objects=False)
    assert len(squares) == 3 and all(" square" in x["caption"] for x in squares)
    shown = []
    rows = bench.judge_rows(tokenizer, FakeTextEncoder(), {"same": refiner}, squares, False, batch_size=2, shown=shown)
    assert list(rows) == ["clips", "z_hat", "z", "same"] and rows["same"] == rows["z_hat"]
    assert [label for label, _ in shown] == [f"{x['caption']}: clips | z_hat | z | same" for x in squares]
    assert all(frames.shape == (12, 64, 64, 3) for _, frames in shown)  # frames 0, 8, 16 of each row
    assert np.array_equal(shown[0][1][:3], video_to_uint8(squares[0]["video"])[::8])  # the clip itself first
    assert rows["clips"] == [1.0, 1.0]  # the judge reads a drawn square as a square, filling its box
    with torch.no_grad():  # the z row decodes the encoder's mean, unquantized
        z = tokenizer.encode_latent(torch.stack([x["video"] for x in squares]))[0]
        fills = [bench.verdict(video_to_uint8(v.clamp(-1, 1)), "", False)[1] for v in tokenizer.decode_latent(z)]
    assert np.isclose(rows["z"][1], np.nanmean(fills), equal_nan=True)
    pairs = bench.clips(4, 64, 1, two_objects=True)
    assert all(" and " in x["caption"] for x in pairs) and any(" square" in x["caption"] for x in pairs)
    # both right, with motion, and every square a pair names judged square
    assert bench.judge_rows(tokenizer, FakeTextEncoder(), {}, pairs, True)["clips"] == [1.0, 1.0, 1.0]


def test_rerank_pairs_keeps_one_video_per_group_of_seeds():
    """bench/rerank_pairs.py: the nine shape pairings of a pair's caption, a score for each per video, and per
    group of N seeds the first seed, the best-scored video and the oracle (any right)."""
    from pyratok.understanding.common import encode_videos

    bench = load_bench("rerank_pairs")
    item = (("red", "square", "left"), ("blue", "circle", "up"))
    captions = bench.shape_captions(item)
    assert len(set(captions)) == 9 and captions[3] == "a red square moving left and a blue circle moving up"
    assert all(c.startswith("a red ") and " and a blue " in c for c in captions)
    tokenizer = tiny_tokenizer(text_dim=384)

    def pooled_text(texts):  # a random unit vector per text, as MiniLM's pooled output
        rows = [torch.randn(384, generator=torch.Generator().manual_seed(len(t))) for t in texts]
        return type("Out", (), {"pooled": torch.nn.functional.normalize(torch.stack(rows), dim=-1)})()

    with torch.no_grad():
        pyramid = encode_videos(tokenizer, torch.rand(2, 3, 5, 32, 32) * 2 - 1)
        scores = bench.own_scores(tokenizer, pooled_text, pyramid, [item, item])
    assert len(scores) == 2 and scores[0].shape == (9,) and np.isfinite(scores).all()
    # two prompts x 4 seeds: right videos are prompt a's second and prompt b's fourth; the score finds a's only
    right = {("a", 1): True, ("b", 3): True}
    own = {("a", 1): 0.9, ("b", 0): 0.9}
    records = [{"prompt": p, "both_colour_shape_right": right.get((p, k), False), "own": own.get((p, k), 0.1 * k)}
               for p in "ab" for k in range(4)]
    assert bench.best_of(records, 4) == {"first seed": 0.0, "tokenizer score": 0.5, "oracle": 1.0}
    assert bench.best_of(records, 2) == {"first seed": 0.0, "tokenizer score": 0.5, "oracle": 0.5}
