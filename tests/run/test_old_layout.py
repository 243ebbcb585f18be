"""A run folder made before ganexp/ had subpackages (tests/fixtures/flat_layout_run, made at cbb3aa2, whose
stored configs name `ganexp.losses.GANLoss`) keeps working: it resumes in place, and its checkpoint and its
export sample."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from ganexp.config import registry
from ganexp.gan.losses import GANLoss
from ganexp.io.results import read_metrics
from tests.helpers import ROOT, run_train

FIXTURE = ROOT / "tests" / "fixtures" / "flat_layout_run"


@pytest.fixture
def old_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    stored = run / "checkpoints" / "last.ckpt.stored"  # not *.ckpt in git: run outputs are ignored there
    stored.rename(stored.with_suffix(""))
    return run


def test_the_stored_loss_name_is_the_loss_class():
    assert "_target_: ganexp.losses.GANLoss" in (FIXTURE / ".hydra" / "config.yaml").read_text()
    assert registry.kind_of("ganexp.losses.GANLoss") == "loss"
    built = registry.build({"_target_": "ganexp.losses.GANLoss", "name": "hinge"}, "loss", key="loss")
    assert type(built) is GANLoss and built.name == "hinge"


@pytest.mark.slow
def test_an_old_run_resumes_in_place_and_writes_its_own_checkpoint(old_run, tmp_path):
    assert torch.load(old_run / "checkpoints" / "last.ckpt", weights_only=True)["iteration"] == 10
    proc = run_train(f"ckpt_path={old_run}/checkpoints/last.ckpt", "trainer.max_epochs=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = read_metrics(old_run)
    assert (record["status"], record["iteration"]) == ("finished", 15)
    assert torch.load(old_run / "checkpoints" / "last.ckpt", weights_only=True)["iteration"] == 15
    assert not (tmp_path / "outputs").exists()  # in place: no new run folder


@pytest.mark.slow
@pytest.mark.parametrize("source", ["checkpoints/last.ckpt", "g.safetensors"])
def test_an_old_checkpoint_and_export_sample(old_run, tmp_path, source):
    out = tmp_path / "s.npz"
    proc = subprocess.run([sys.executable, "-m", "ganexp.sample", str(old_run / source), "--n", "16", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(out) as samples:
        assert samples[samples.files[0]].shape == (16, 2)
