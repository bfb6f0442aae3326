"""The shared training scaffold: kill-safe checkpoints, pickle-free and exact resume for each trainer,
renamed config keys, and a chaos test that SIGKILLs a run at random moments (saves included)."""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from factories import fresh_accelerate_state, tiny_tokenizer
from pyratok.training import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
GEN_TINY = ["model.width=32", "model.depth=1", "model.heads=2", "train.batch_size=2", "train.log_every=1",
            "train.warmup_steps=2", "train.text_dropout=0.5", "train.self_correction_prob=0.1"]


def _write_checkpoint(output_dir: Path, step: int) -> Path:
    tmp = ckpt.begin(output_dir, step)
    (tmp / "a.json").write_text("{}")
    (tmp / "b.bin").write_bytes(b"x" * 100)
    return ckpt.commit(tmp, step)


def test_latest_skips_empty_partial_and_truncated_checkpoints(tmp_path):
    good = _write_checkpoint(tmp_path, 2)
    truncated = _write_checkpoint(tmp_path, 4)
    (truncated / "b.bin").write_bytes(b"x" * 10)
    missing = _write_checkpoint(tmp_path, 6)
    (missing / "a.json").unlink()
    (tmp_path / "checkpoints" / "checkpoint-8").mkdir()  # empty: killed before anything was written
    (tmp_path / "checkpoints" / "tmp-checkpoint-10").mkdir()  # a save in progress is never a candidate
    with pytest.warns(UserWarning) as record:
        assert ckpt.find_checkpoint(tmp_path, "latest") == good
    messages = "\n".join(str(w.message) for w in record)
    assert "checkpoint-8: no manifest.json" in messages and "checkpoint-6: missing a.json" in messages
    assert "checkpoint-4: b.bin has 10 bytes, the manifest says 100" in messages
    with pytest.raises(ValueError, match="incomplete: missing a.json"):
        ckpt.find_checkpoint(tmp_path, str(missing))
    assert ckpt.find_checkpoint(tmp_path / "nothing", "latest") is None
    _write_checkpoint(tmp_path, 12)  # the next save clears leftovers of killed saves
    assert not (tmp_path / "checkpoints" / "tmp-checkpoint-10").exists()
    ckpt.prune(tmp_path, 2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-8", "checkpoint-12"]
    stale = _write_checkpoint(tmp_path, 1)  # a fresh run into an old output_dir: its new checkpoint stays
    ckpt.prune(tmp_path, 2, keep=stale)
    assert stale.is_dir()


def _generator(out: Path, steps: int, *extra: str, cache: Path) -> None:
    from generator.train import main

    sets = [f"data.token_cache_dir={cache}", f"train.output_dir={out}", f"train.max_steps={steps}", *GEN_TINY]
    with fresh_accelerate_state():
        assert main(["--set", *sets, *extra]) == 0


class Payload:
    """Unpickling this runs code: it creates the file `marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_the_ema_resumes_onto_an_indexed_cpu_device(tmp_path):
    """Under multi-CPU DDP accelerate's device is "cpu:0", which safetensors refuses by name: the EMA (and
    any tensor file) loads onto the CPU all the same."""
    from diffusers.training_utils import EMAModel

    weights = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    ema = EMAModel(weights, decay=0.9)
    ema.step([torch.nn.Parameter(w.detach() + 1) for w in weights])
    ckpt.save_ema(ema, tmp_path)
    again = EMAModel([torch.nn.Parameter(torch.zeros_like(w)) for w in weights], decay=0.9)
    ckpt.load_ema(again, tmp_path, torch.device("cpu", 0))
    assert again.optimization_step == ema.optimization_step == 1
    for a, b in zip(again.shadow_params, ema.shadow_params):
        assert torch.equal(a, b)


def test_planted_pickles_never_run_on_resume(cache_dir, tmp_path):
    out = tmp_path / "run"
    _generator(out, 2, "train.save_every=2", cache=cache_dir)
    clean = out / "checkpoints" / "checkpoint-2"
    marker = tmp_path / "payload_ran"
    pickle.loads(pickle.dumps(Payload(tmp_path / "probe")))
    assert (tmp_path / "probe").exists()  # the payload does run when unpickled
    names = sorted(str(p.relative_to(clean)) for p in clean.rglob("*") if p.is_file() and p.name != ckpt.MANIFEST)
    assert {"model.safetensors", "optimizer.pt", "ema.safetensors", "scheduler.json", "trainer_state.json",
            "random_states_0.safetensors"} <= set(names)
    for name in names:  # one poisoned file at a time, the manifest updated: every reader refuses it
        poisoned = tmp_path / "poisoned" / "checkpoints" / "checkpoint-2"
        shutil.rmtree(poisoned.parent.parent, ignore_errors=True)
        shutil.copytree(clean, poisoned)
        file = poisoned / name
        torch.save(Payload(marker), file) if name.endswith(".pt") else file.write_bytes(pickle.dumps(Payload(marker)))
        manifest = json.loads((poisoned / ckpt.MANIFEST).read_text())
        manifest["files"][name] = file.stat().st_size
        (poisoned / ckpt.MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(ValueError):
            _generator(poisoned.parent.parent, 3, "--resume_from_checkpoint", str(poisoned), cache=cache_dir)
        assert not marker.exists(), name
    for file in clean.rglob("*"):  # every file poisoned, manifest too: 'latest' skips it and starts afresh
        if file.is_file():
            file.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.warns(UserWarning, match="skipping checkpoint .*checkpoint-2: unreadable manifest.json"):
        _generator(out, 1, "--resume_from_checkpoint", "latest", cache=cache_dir)
    assert not marker.exists()


def test_deepspeed_files_must_load_with_weights_only_first(tmp_path):
    """DeepSpeed reads its own files with weights_only=False: the guard refuses one that holds code."""
    from pyratok.training.loop import guard_deepspeed_files

    folder = tmp_path / "deepspeed" / "global_step2"
    folder.mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(2)}, "ds_version": "0.19", "step": 2}, folder / "mp_rank_00_model_states.pt")
    guard_deepspeed_files(tmp_path / "deepspeed")
    marker = tmp_path / "payload_ran"
    torch.save({"optimizer_state_dict": Payload(marker)}, folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(ValueError, match="refusing .*zero_pp_rank_0"):
        guard_deepspeed_files(tmp_path / "deepspeed")
    assert not marker.exists()


MICRO_TOKENIZER = {
    "model": {"backbone": {"base_dim": 8, "z_dim": 4, "num_res_blocks": 1},
              "quantizer": {"hidden_dim": 32, "num_bits": 16, "bits_per_group": 4,
                            "level_strides": [[4, 4, 4], [2, 2, 2], [1, 1, 1]]},
              "alignment": {"embed_dim": 16, "hidden_dim": 16}, "prior": {"width": 32, "depth": 1, "heads": 2},
              "text_dim": 384},
    "data": {"shapes_weight": 1.0, "num_frames": 5, "height": 32, "width": 32, "length": 5},
    "train": {"batch_size": 1, "log_every": 1, "image_every": 100, "save_every": 2, "warmup_steps": 1,
              "gradient_accumulation_steps": 2, "text_dropout": 0.5, "vae_steps": 3, "vae_sample": True},
}


class Interrupted(Exception):
    pass


def interrupt_after_saving(monkeypatch, step: int) -> None:
    """The next run stops right after writing checkpoint-<step>, as a killed job would (same config, same
    max_steps, so the same LR schedule)."""
    from pyratok.training.loop import Trainer

    save = Trainer.save

    def save_then_stop(self):
        path = save(self)
        if self.step == step:
            monkeypatch.setattr(Trainer, "save", save)
            raise Interrupted(path)
        return path

    monkeypatch.setattr(Trainer, "save", save_then_stop)


def _tokenizer(config: Path, out: Path, steps: int, resume: str | None = None) -> dict:
    from pyratok.train import main

    args = ["--config", str(config), "--output_dir", str(out), "--set", f"train.max_steps={steps}"]
    with fresh_accelerate_state():
        main(args + (["--resume_from_checkpoint", resume] if resume else []))
    return load_file(str(out / "tokenizer" / "diffusion_pytorch_model.safetensors"))


def test_tokenizer_resume_is_exact_across_accumulation_and_epochs(tmp_path, monkeypatch):
    """5 clips a epoch, 2 micro-batches a step: the resume at step 2 (micro-batch 4) continues mid-epoch,
    then crosses the epoch; text dropout, the posterior samples of the warm-up and the data order continue."""
    config = tmp_path / "micro.yaml"
    config.write_text(yaml.safe_dump(MICRO_TOKENIZER))
    straight = _tokenizer(config, tmp_path / "straight", 4)
    interrupt_after_saving(monkeypatch, 2)
    with pytest.raises(Interrupted):
        _tokenizer(config, tmp_path / "resumed", 4)
    first = load_file(str(tmp_path / "resumed" / "checkpoints" / "checkpoint-2" / "model.safetensors"))
    resumed = _tokenizer(config, tmp_path / "resumed", 4, "latest")
    assert not torch.equal(first["tokenizer.backbone.decoder.conv_in.bias"], resumed["backbone.decoder.conv_in.bias"])
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_alignment_resume_is_exact_across_accumulation(tmp_path, monkeypatch):
    from pyratok.train_alignment import AlignmentData, AlignmentTrainConfig, AlignmentTrainLoop, train_alignment

    tiny_tokenizer(seed=1, text_dim=384).save_pretrained(tmp_path / "tok")

    def run(out: Path, steps: int, resume: str | None = None) -> dict:
        cfg = AlignmentTrainConfig(
            tokenizer=str(tmp_path / "tok"), data=AlignmentData(clips=20, val_clips=4, num_frames=5, size=32),
            train=AlignmentTrainLoop(output_dir=str(out), max_steps=steps, batch_size=8, gradient_accumulation_steps=2,
                                     save_every=1, log_every=1, lr=3e-3))
        if (tmp_path / "straight" / "encoded_clips.safetensors").is_file() and not (out / "encoded_clips.safetensors").is_file():
            out.mkdir(parents=True, exist_ok=True)  # the same clips: encode once
            shutil.copy(tmp_path / "straight" / "encoded_clips.safetensors", out)
        with fresh_accelerate_state():
            folder = train_alignment(cfg, resume)
        return load_file(str(folder / "diffusion_pytorch_model.safetensors"))

    straight = run(tmp_path / "straight", 3)
    interrupt_after_saving(monkeypatch, 1)
    with pytest.raises(Interrupted):
        run(tmp_path / "resumed", 3)
    resumed = run(tmp_path / "resumed", 3, "latest")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_renamed_tokenizer_keys_load_with_a_message(tmp_path):
    from pyratok.config import load_config
    from pyratok.train import TokenizerTrainConfig

    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"train": {"steps": 7, "grad_clip": 0.5}}))
    with pytest.warns(UserWarning) as record:
        cfg = load_config(TokenizerTrainConfig, path, ["train.steps=9"])
    assert (cfg.train.max_steps, cfg.train.max_grad_norm) == (9, 0.5)  # the override wins over the file
    messages = "\n".join(str(w.message) for w in record)
    assert "'train.steps' is renamed: now train.max_steps" in messages
    assert "'train.grad_clip' is renamed: now train.max_grad_norm" in messages
    assert cfg.train.mixed_precision is None  # the launcher's setting, unless the config says otherwise
    with pytest.raises(ValueError, match="report_to must be one of"):
        load_config(TokenizerTrainConfig, None, ["train.report_to=mlflow"])
    with pytest.raises(ValueError, match="got 'cosine_to_zero'"):
        load_config(TokenizerTrainConfig, None, ["train.lr_scheduler=cosine_to_zero"])


CHAOS_STEPS = 12
# A parent that imports the trainer once, then forks one training process per command it reads (its pid,
# then its wait status, go back): each run is a whole process that a SIGKILL ends, without paying the
# imports (most of a start-up here) for every run. The parent never runs torch, so forking is safe.
FORK_SERVER = """
import json, os, sys
from generator.train import main
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1), os.dup2(devnull, 2)
        try:
            code = main(json.loads(line))
        except BaseException:
            code = 1
        os._exit(code or 0)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (the fork server reaps its children at once)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.slow
def test_chaos_sigkill_and_resume_gives_the_uninterrupted_weights(cache_dir, tmp_path):
    """SIGKILL a generator run at random moments (a checkpoint every step, so kills land in saves too),
    resume with 'latest' until it finishes: the exported weights (raw and EMA) equal an uninterrupted run's."""
    common = ["train.save_every=1", "train.gradient_accumulation_steps=2", "train.checkpoints_total_limit=2"]
    _generator(tmp_path / "straight", CHAOS_STEPS, *common, cache=cache_dir)
    out = tmp_path / "chaos"
    sets = [f"data.token_cache_dir={cache_dir}", f"train.output_dir={out}", f"train.max_steps={CHAOS_STEPS}",
            *GEN_TINY, *common]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    server = subprocess.Popen([sys.executable, "-c", FORK_SERVER], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    rng = random.Random(0)
    kills, during_save = 0, 0
    try:
        for attempt in range(6):
            done = max([ckpt.step_of(p) for p in ckpt.list_checkpoints(out)], default=0)
            server.stdin.write(json.dumps(["--resume_from_checkpoint", "latest", "--set", *sets]) + "\n")
            server.stdin.flush()
            pid = int(server.stdout.readline())
            if attempt < 3:  # kill after this run has made progress: at once when a save is seen under way
                t0 = time.monotonic()
                while not any(ckpt.step_of(p) > done for p in ckpt.list_checkpoints(out)) and _alive(pid):
                    assert time.monotonic() - t0 < 120, "no progress"
                    time.sleep(0.002)
                # a random pause, cut short 3 checkpoints on: a fast machine runs all 12 steps in 0.3 s, and a run
                # that finished before its kill would leave the next attempt nothing to save
                pause, t0 = rng.uniform(0.0, 0.3), time.monotonic()
                while (time.monotonic() - t0 < pause and not (attempt == 0 and any((out / "checkpoints").glob("tmp-*")))
                       and not any(ckpt.step_of(p) >= done + 3 for p in ckpt.list_checkpoints(out))):
                    time.sleep(0.001)
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                    during_save += any((out / "checkpoints").glob("tmp-*"))
                except ProcessLookupError:  # it had finished already
                    pass
            status = int(server.stdout.readline())
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and (out / "generator").is_dir():
                break
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"run failed: status {status}"
        else:
            pytest.fail("the run never finished")
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    print(f"chaos: {kills} SIGKILLs, {during_save} during a save, finished on attempt {attempt + 1}")
    assert kills == 3
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.ema.safetensors"):
        straight = load_file(str(tmp_path / "straight" / "generator" / name))
        chaos = load_file(str(out / "generator" / name))
        for key in straight:
            assert torch.equal(straight[key], chaos[key]), (name, key)


def test_report_to_none_and_wandb_offline(tmp_path, monkeypatch):
    from pyratok.accelerate_utils import make_accelerator

    with fresh_accelerate_state():
        acc = make_accelerator(tmp_path, report_to="none")
        acc.init_trackers("x")
        assert acc.log_with == [] and not (tmp_path / "logs").exists()
    monkeypatch.delenv("WANDB_MODE", raising=False)
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs the wandb package"):
            make_accelerator(tmp_path, report_to="wandb")
        return
    with fresh_accelerate_state():
        make_accelerator(tmp_path, report_to="wandb")
    assert os.environ["WANDB_MODE"] == "offline"
