"""Tests for the package itself: the built wheel carries configs and the default model, and runs the demo.

Builds the wheel from a copy of the sources, installs it into a fresh venv that reuses this environment's
installed dependencies (torch included) and runs `pyratok demo` in an empty folder (about 30 s).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "pyratok", "generator", "pipelines", "configs", "checkpoints")


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, **kwargs)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "checkpoints" / "pyratok-shapes-tiny" / "model_index.json").is_file(),
                    reason="no default model in this checkout")
def test_wheel_installs_and_runs_the_demo_in_an_empty_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:  # a copy: building writes build/ and *.egg-info next to the sources
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
          str(src)])
    wheel = next((tmp_path / "dist").glob("pyratok-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"pyratok/shipped_configs/tokenizer/tiny.yaml", "pyratok/shipped_model/model_index.json",
            "pyratok/shipped_model/pipeline_pyratok.py",
            "pyratok/shipped_model/vae/diffusion_pytorch_model.safetensors",
            "pyratok/shipped_model/transformer/diffusion_pytorch_model.safetensors",
            "pyratok/shipped_tokenizer/config.json",
            "pyratok/shipped_tokenizer/diffusion_pytorch_model.safetensors"} <= names
    assert any(n.endswith("licenses/LICENSE") for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    where_libs = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(_run([str(python), "-c", where_libs]).stdout.strip())
    # this environment's packages (torch & co.) come after the wheel's own files
    (purelib / "reuse_installed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)])

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    where = _run([str(python), "-c", "import pyratok, pipelines; from pyratok.default_model import default_model_path, "
                  "default_tokenizer_path; from pyratok.config import read_config_file; "
                  "read_config_file('configs/generator/shapes.yaml'); "
                  "print(pyratok.__file__, pipelines.__file__, default_model_path(), default_tokenizer_path())"],
                 cwd=empty, env=env).stdout
    assert str(ROOT) not in where and where.count(str(purelib)) == 4  # the wheel's files, not this checkout's
    said = _run([str(venv / "bin" / "pyratok"), "demo", "--out", "out"], cwd=empty, env=env).stdout
    assert "prompt: a red circle moving left" in said and "no trained default model" not in said
    assert (empty / "out" / "demo.mp4").stat().st_size > 0 and (empty / "out" / "demo.png").stat().st_size > 0
