"""What tests share: compose the real config (CPU, tiny, into a folder), run train.py as a user does."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from hydra import compose, initialize_config_dir

from ganexp.run.resume import register_resolvers
from tests.helpers.warm import run_python  # noqa: F401 - the tests' `python ...`

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
FAST = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.max_epochs=1",
]
SMALL_EVAL = ["eval.n=250", "eval.n_final=500"]  # when metrics are on (toy's modes need 250 samples)


def make_cfg(out: Path, *overrides: str):
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        small = [] if "eval=none" in overrides else SMALL_EVAL
        return compose("train", overrides=[f"paths.output_dir={out}", *FAST, *small, *overrides])


def train_module(cfg):
    """train.py's train() in this process; the GANModule it trained."""
    from train import train

    return train(cfg)[1]["module"]


def run_train(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python train.py ARGS` as a user runs it, from `cwd` (so outputs/ lands there): a process of its
    own, forked from a warm interpreter (tests/helpers/warm.py)."""
    return run_python(str(ROOT / "train.py"), *args, cwd=cwd, env=env, timeout=timeout)


def data_dir_with(name: str) -> Path | None:
    root = os.environ.get("GANEXP_DATA_DIR")
    if root and (Path(root) / name / "raw" / "train-images-idx3-ubyte").is_file():
        return Path(root)
    return None
