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

    path = Path(__file__).resolve().parents[1] / "bench" / "finest_bits.py"
    spec = importlib.util.spec_from_file_location("finest_bits", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
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
    assert list(result) == [16, 12, 8, 4]  # 16 bits in groups of 4
    assert all(0 <= r["shape"] <= 1 and np.isfinite(r["psnr"]) for r in result.values())
