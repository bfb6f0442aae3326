"""Tokenizer training: a short overfit, and a two-process `accelerate launch` run resumed from its checkpoint."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pyratok.data.shapes import ShapesDataset
from pyratok.objective import LossWeights, TokenizerObjective
from pyratok.tokenizer import PyraTokTokenizer

MICRO_MODEL = {
    "backbone": {"base_dim": 8, "z_dim": 4, "num_res_blocks": 1},
    "quantizer": {"hidden_dim": 32, "num_bits": 16, "bits_per_group": 4,
                  "level_strides": [[4, 4, 4], [2, 2, 2], [1, 1, 1]]},
    "alignment": {"embed_dim": 16, "hidden_dim": 16},
    "prior": {"width": 32, "depth": 1, "heads": 2},
    "text_dim": 384,
}


def _micro_tokenizer() -> PyraTokTokenizer:
    """A fresh tokenizer of MICRO_MODEL (seed first for fixed weights)."""
    return PyraTokTokenizer(**{f"{k}_config" if k != "text_dim" else k: v for k, v in MICRO_MODEL.items()})


def test_overfit_one_shapes_clip_halves_reconstruction_loss():
    torch.manual_seed(0)
    model = _micro_tokenizer()
    objective = TokenizerObjective(model, LossWeights(align=0.0, ar=0.05))
    clip = ShapesDataset(split="train", num_frames=5, height=32, width=32, length=1, seed=3)[0]["video"][None]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        terms, _ = objective(clip)
        rec = terms["l1"] + 0.2 * (1 - terms["ssim"])
        losses.append(float(rec))
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    assert min(losses[-3:]) <= 0.5 * losses[0], losses


def _write_config(path: Path, out: Path) -> Path:
    cfg = {
        "model": MICRO_MODEL,
        "data": {"shapes_weight": 1.0, "num_frames": 5, "height": 32, "width": 32, "length": 64},
        "train": {"output_dir": str(out), "max_steps": 2, "batch_size": 1, "log_every": 1,
                  "image_every": 100, "save_every": 1, "warmup_steps": 1,
                  "write_param_checksum": True},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _launch(config: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "pyratok.train", "--config", str(config), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_process_run_resumes_from_checkpoint(tmp_path):
    out = tmp_path / "run"
    config = _write_config(tmp_path / "micro.yaml", out)
    first = _launch(config)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    sums = [(out / f"param_checksum_rank{r}.txt").read_text() for r in (0, 1)]
    assert sums[0] == sums[1], "DDP ranks ended with different parameters"
    second = _launch(config, "--resume_from_checkpoint", "latest", "--set", "train.max_steps=3", "--set", "train.log_every=1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout + second.stderr and "at step 2" in second.stdout + second.stderr
    assert (out / "checkpoints" / "checkpoint-3").is_dir()
    saved = (out / "config.yaml").read_text()  # repeated --set flags all apply
    assert "max_steps: 3" in saved and "log_every: 1" in saved
    again = PyraTokTokenizer.from_pretrained(out / "tokenizer")
    assert again.quantizer.config.num_bits == 16
    assert list((out / "logs").rglob("events.out.tfevents*")), "TensorBoard logs missing"


def test_decoder_stage_from_a_smaller_codebook_trains_the_decoder_alone(tmp_path):
    """init_from + grow_from_init: a 24-bit model starts from a 16-bit one (same tokens in its first 16
    bits); decoder_only then changes nothing but the decoder, so the tokens stay exactly as they were,
    bit whitening's running statistics included."""
    from pyratok.checkpoints import load_saved_weights
    from pyratok.train import main

    torch.manual_seed(0)
    small = _micro_tokenizer()
    small.save_pretrained(tmp_path / "small")
    config = _write_config(tmp_path / "micro.yaml", tmp_path / "run")
    wider = ["model.quantizer.num_bits=24"]
    with pytest.raises(ValueError, match="quantizer.to_bits.weight"):
        main(["--config", str(config), "--set", *wider, f"train.init_from={tmp_path / 'small'}"])
    main(["--config", str(config), "--set", *wider, f"train.init_from={tmp_path / 'small'}",
          "train.grow_from_init=true", "train.decoder_only=true", "train.write_param_checksum=false",
          "model.quantizer.whiten_bits=true"])  # its running statistics must not move either
    trained = PyraTokTokenizer.from_pretrained(tmp_path / "run" / "tokenizer")
    start = PyraTokTokenizer.from_pretrained(tmp_path / "run" / "tokenizer")  # same config, then the small weights
    load_saved_weights(start, tmp_path / "small", grow=True)
    before, after = start.state_dict(), trained.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("backbone.decoder.", "backbone.post_quant_conv.")) for k in changed)
    clip = ShapesDataset(split="train", num_frames=5, height=32, width=32, length=1, seed=3)[0]["video"][None]
    with torch.no_grad():
        old, new = small.eval().encode(clip), trained.eval().encode(clip)
    assert all(torch.equal(a, b[..., :16]) for a, b in zip(old.bits, new.bits))


def test_lapq_on_a_frozen_parent_keeps_the_parent_and_its_latent_statistics(tmp_path):
    """pretrained_vae + freeze_encoder + freeze_decoder: the parent's weights leave training unchanged, only
    LaPQ and the heads learn, and z is normalised by the parent's latents_mean / latents_std. The recipe's
    quantizer-only first stage (quantizer_fit_steps) and refined groups run on the way."""
    from diffusers import AutoencoderKLWan

    from pyratok.train import main

    torch.manual_seed(0)
    parent = AutoencoderKLWan(base_dim=8, z_dim=4, num_res_blocks=1)
    parent.register_to_config(latents_mean=[0.1, -0.2, 0.0, 0.3], latents_std=[1.5, 0.5, 1.0, 2.0])
    parent.save_pretrained(tmp_path / "parent")
    config = _write_config(tmp_path / "micro.yaml", tmp_path / "run")
    main(["--config", str(config), "--set", f"train.pretrained_vae={tmp_path / 'parent'}", "train.freeze_encoder=true",
          "train.freeze_decoder=true", "model.backbone.normalize_latents=true", "train.write_param_checksum=false",
          "train.quantizer_fit_steps=3", "train.quantizer_fit_clips=2", "model.quantizer.refine_groups=true"])
    trained = PyraTokTokenizer.from_pretrained(tmp_path / "run" / "tokenizer")
    assert list(trained.backbone.config.latents_std) == [1.5, 0.5, 1.0, 2.0]
    for name, value in parent.state_dict().items():
        assert torch.equal(trained.backbone.state_dict()[name], value), f"the frozen parent changed at {name}"
    from safetensors.torch import load_file

    steps = [load_file(tmp_path / "run" / "checkpoints" / f"checkpoint-{n}" / "model.safetensors") for n in (1, 2)]
    moved = {k for k in steps[0] if not torch.equal(steps[0][k], steps[1][k])}
    assert any(".quantizer." in k for k in moved) and not any(".backbone." in k for k in moved)


def test_finest_flips_are_checked_and_decode_the_flipped_tokens():
    from pyratok.train import TokenizerTrainLoop, finest_flips

    with pytest.raises(ValueError, match="needs train.decoder_only"):
        TokenizerTrainLoop(finest_flip_max=0.2)
    with pytest.raises(ValueError, match="finest_flip_max must be in"):
        TokenizerTrainLoop(finest_flip_max=0.7, decoder_only=True)
    torch.manual_seed(0)
    model = _micro_tokenizer().eval()
    clip = ShapesDataset(split="train", num_frames=5, height=32, width=32, length=1, seed=3)[0]["video"][None]
    rng = torch.Generator().manual_seed(0)
    flip = finest_flips(model, clip.expand(64, -1, -1, -1, -1), 0.4, rng)  # (64, t, h, w, k)
    rates = flip.flatten(1).float().mean(1)
    assert 0.15 < float(rates.mean()) < 0.25 and float(rates.min()) < 0.05 and float(rates.max()) > 0.35
    with torch.no_grad():
        plain = model(clip)
        flipped = model(clip, flip_finest=flip[:1])
        bits = list(plain.quant.pyramid.bits)
        bits[-1] = torch.where(flip[:1], -bits[-1], bits[-1])
        expected = model.decode_latent(model.quantizer.reconstruct(bits, plain.quant.pyramid.latent_grid), clamp=False)
    assert torch.allclose(flipped.recon, expected, atol=1e-5) and not torch.allclose(flipped.recon, plain.recon)
    with pytest.raises(ValueError, match="finest level's shape"):
        model(clip, flip_finest=flip[:1, :1])
    with pytest.raises(ValueError, match="needs quantize=True"):
        model(clip, quantize=False, flip_finest=flip[:1])




def _decoder_stage(tmp_path, *overrides: str) -> tuple[PyraTokTokenizer, list[str]]:
    """A micro tokenizer saved to tmp_path/start, and the arguments of a decoder-only stage from it (writing
    tmp_path/run), with the frozen parts' losses off."""
    torch.manual_seed(0)
    start = _micro_tokenizer()
    start.save_pretrained(tmp_path / "start")
    config = _write_config(tmp_path / "micro.yaml", tmp_path / "run")
    return start, ["--config", str(config), "--set", f"train.init_from={tmp_path / 'start'}", "train.decoder_only=true",
                   "train.write_param_checksum=false", "loss.align=0", "loss.ar=0", *overrides]


def _assert_only_the_decoder_changed(start: PyraTokTokenizer, folder) -> None:
    before, after = start.state_dict(), PyraTokTokenizer.from_pretrained(folder).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("backbone.decoder.", "backbone.post_quant_conv.")) for k in changed)


def test_decoder_stage_decodes_flipped_finest_bits(tmp_path, monkeypatch):
    """train.finest_flip_max reaches the decoder: every training forward of the decoder-only stage gets its
    own flips of the finest level (none without the option), and the stage still changes only the decoder."""
    from pyratok.train import main

    seen = []
    forward = PyraTokTokenizer.forward

    def spy(self, *args, flip_finest=None, **kwargs):
        seen.append(flip_finest)
        return forward(self, *args, flip_finest=flip_finest, **kwargs)

    monkeypatch.setattr(PyraTokTokenizer, "forward", spy)
    start, stage = _decoder_stage(tmp_path, "train.batch_size=4")
    main([*stage, "train.finest_flip_max=0.5"])
    flips = [f for f in seen if f is not None]
    assert len(flips) == 2 and all(f.dtype == torch.bool and f.shape[0] == 4 and f.shape[-1] == 16 for f in flips)
    assert 0 < float(torch.stack(flips).float().mean()) < 0.5 and not torch.equal(flips[0], flips[1])
    _assert_only_the_decoder_changed(start, tmp_path / "run" / "tokenizer")
    seen.clear()
    main([*stage, f"train.output_dir={tmp_path / 'run0'}"])
    assert seen and all(f is None for f in seen)


def test_decoder_stage_decodes_the_latent_on_its_share_of_steps(tmp_path, monkeypatch):
    """train.decoder_latent_prob: a decoder-only step decodes the clips' posterior mean (the latent a
    `target: latent` refiner draws) instead of their z_hat; the choice is one draw per step from the seed (every
    rank the same), and the stage still changes only the decoder."""
    from pyratok.train import TokenizerTrainLoop, latent_step_draw, main

    with pytest.raises(ValueError, match="needs train.decoder_only"):
        TokenizerTrainLoop(decoder_latent_prob=0.5)
    with pytest.raises(ValueError, match="decoder_latent_prob must be in"):
        TokenizerTrainLoop(decoder_latent_prob=1.5, decoder_only=True)
    draws = [latent_step_draw(0, step) for step in range(2000)]
    assert draws == [latent_step_draw(0, step) for step in range(2000)] != [latent_step_draw(1, s) for s in range(2000)]
    assert 0.45 < sum(d < 0.5 for d in draws) / len(draws) < 0.55
    seen = []
    forward = PyraTokTokenizer.forward

    def spy(self, *args, quantize=True, sample_posterior=True, **kwargs):
        seen.append((quantize, sample_posterior))
        return forward(self, *args, quantize=quantize, sample_posterior=sample_posterior, **kwargs)

    monkeypatch.setattr(PyraTokTokenizer, "forward", spy)
    start, stage = _decoder_stage(tmp_path, "loss.latent=0")
    main([*stage, "train.decoder_latent_prob=1.0"])
    assert seen and all(s == (False, False) for s in seen)  # every step: the posterior mean, no noise
    _assert_only_the_decoder_changed(start, tmp_path / "run" / "tokenizer")
    seen.clear()
    main([*stage, f"train.output_dir={tmp_path / 'run0'}"])
    assert seen and all(q for q, _ in seen)  # without the option every step decodes z_hat
