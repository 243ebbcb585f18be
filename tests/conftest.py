"""Compose the real config once per test, forced onto CPU, tiny and into tmp_path."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import train  # noqa: F401  (registers the ganexp_run_dir resolver)

# Domain classifiers train into a cache of this test session's own (digits: seconds), unless
# GANEXP_CACHE_DIR names one already (keeps MNIST's ~2 minutes of training between sessions).
os.environ.setdefault("GANEXP_CACHE_DIR", tempfile.mkdtemp(prefix="ganexp-cache-"))

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FAST = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.max_epochs=1",
]
SMALL_EVAL = ["eval.n=200", "eval.n_final=500"]  # when metrics are on


def make_cfg(out: Path, *overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        small = [] if "eval=none" in overrides else SMALL_EVAL
        return compose("train", overrides=[f"paths.output_dir={out}", *FAST, *small, *overrides])


def run_train(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python train.py ARGS` as a user runs it, from `cwd` (so outputs/ lands there)."""
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def data_dir_with(name: str) -> Path | None:
    root = os.environ.get("GANEXP_DATA_DIR")
    if root and (Path(root) / name / "raw" / "train-images-idx3-ubyte").is_file():
        return Path(root)
    return None


@pytest.fixture
def cfg_factory(tmp_path):
    return lambda *overrides: make_cfg(tmp_path, *overrides)
