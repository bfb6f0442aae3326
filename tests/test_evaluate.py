"""`python -m pyratok.evaluate`: reconstruction metrics, utilization per level, and on Shapes the judged
reconstructions (what a generator on these tokens could show at best)."""
from __future__ import annotations

import json

import pytest
from factories import tiny_tokenizer

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
