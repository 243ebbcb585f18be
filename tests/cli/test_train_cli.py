"""End-to-end: `python train.py` and `python -m ganexp.sample` as a user runs them."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import ROOT, data_dir_with, run_train

pytestmark = pytest.mark.slow
TAGS = {"loss/d", "loss/g", "d/real_score", "d/fake_score", "d/acc_real", "d/acc_fake", "d/acc", "noise/sigma",
        "lr/g", "lr/d", "grad/g_norm", "grad/d_norm"}
SHORT = ["trainer.max_epochs=2", "log_every=10", "image_every=20", "ckpt_every=50", "trainer.enable_progress_bar=false"]


def only_run_dir(cwd: Path) -> Path:
    runs = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("digits")
    result = run_train(*SHORT, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run_dir(cwd)


def test_default_run_writes_tensorboard_scalars_images_and_a_checkpoint(digits_run):
    events = EventAccumulator(str(digits_run), size_guidance={"images": 0}).Reload()
    assert TAGS <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss/g")] == [0, 10, 20, 30, 40]  # 44 iterations = 2 × 22
    assert {"samples/real", "samples/fake"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Images("samples/fake")] == [20, 40, 44]
    ckpt = torch.load(digits_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["iteration"] == 44 and ckpt["epoch"] == 2
    assert len(ckpt["optimizer_states"]) == 2  # G and D
    assert ckpt["hyper_parameters"]["data"]["_target_"].endswith("DigitsDataModule")
    assert (digits_run / ".hydra" / "config.yaml").is_file()


def test_sample_cli_writes_png_and_npz(digits_run, tmp_path):
    for out in ("grid.png", "samples.npz"):
        result = subprocess.run([sys.executable, "-m", "ganexp.sample", str(digits_run), "--n", "12", "--out",
                                 str(tmp_path / out)], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    images = np.load(tmp_path / "samples.npz")["images"]
    assert images.shape == (12, 8, 8) and images.dtype == np.uint8 and images.max() > images.min()
    assert (tmp_path / "grid.png").stat().st_size > 100


def test_resume_continues_in_the_same_run_folder(digits_run, tmp_path):
    ckpt = digits_run / "checkpoints" / "last.ckpt"
    result = run_train("trainer.max_epochs=3", "log_every=10", "trainer.enable_progress_bar=false",
                       f"ckpt_path={ckpt}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "outputs").exists()  # no new run folder
    assert torch.load(ckpt, weights_only=True)["iteration"] == 66
    steps = [e.step for e in EventAccumulator(str(digits_run)).Reload().Scalars("loss/d")]
    assert steps == [0, 10, 20, 30, 40, 50, 60]


def test_missing_dataset_is_one_line_with_both_fixes(tmp_path):
    result = run_train("data=mnist", f"data.root={tmp_path}", "data.download=false", cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "MNIST/raw/train-images-idx3-ubyte" in lines[0]
    assert "GANEXP_DATA_DIR=" in lines[0] and "data.root=" in lines[0]


def test_short_mnist_run(tmp_path):
    if data_dir_with("MNIST") is None:
        pytest.skip("GANEXP_DATA_DIR does not hold MNIST")
    result = run_train("loss=nonsaturating", "data=mnist", "batch_size=100", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=30", "log_every=10", "trainer.enable_progress_bar=false",
                       cwd=tmp_path, timeout=1500)  # trains MNIST's classifier on first use: minutes, more when shared
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run_dir(tmp_path)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["iteration"] == 30
    events = EventAccumulator(str(run)).Reload()
    assert [e.step for e in events.Scalars("loss/d")] == [0, 10, 20]
