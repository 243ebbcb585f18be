"""Every option of every config group trains two iterations (a module of its own: pytest-xdist's loadscope runs it
beside tests/gan/test_module.py)."""

import pytest
import torch
from PIL import Image

from tests.helpers import CONF, data_dir_with
from tests.helpers.rgb_data import SMALL as RGB_SMALL, write_all
from train import train

SLOW_CASES = {("data", "mnist"), ("data", "fashion_mnist"), ("data", "image_folder")}  # 60,000 images; PNG decoding
SMALL = ["model=mlp_small", "batch_size=16", "trainer.limit_train_batches=2", "log_every=1", "image_every=1"]


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


CASES = [pytest.param(g, o, id=f"{g}={o}", marks=[pytest.mark.slow] if (g, o) in SLOW_CASES else [])
         for g in ["data", "model", "loss", "optimizer", "noise", "augment", "trainer", "logger"] for o in _options(g)]


@pytest.mark.parametrize("group, option", CASES)
def test_every_option_of_every_group_trains_two_iterations(group, option, cfg_factory, tmp_path):
    extra = []
    if group == "data" and option in ("mnist", "fashion_mnist"):
        name = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[option]
        if data_dir_with(name) is None:
            pytest.skip(f"GANEXP_DATA_DIR does not hold {name}")
        extra = ["eval=none"]  # classifiers train for minutes: tests/cli test_short_mnist_run trains MNIST's
    if group == "data" and option == "image_folder":
        for i in range(40):
            Image.new("L", (12, 12), i * 10).save(tmp_path / f"{i}.png")
        extra = [f"data.path={tmp_path}", "data.size=8", "data.channels=1",
                 "eval=none"]  # its metrics are Inception's: tests/metrics/test_inception.py
    if group == "data" and option in RGB_SMALL:  # tiny files in torchvision's layouts; Inception's metrics: as above
        extra = [f"data.root={write_all(tmp_path / 'data')}", *RGB_SMALL[option], "eval=none"]
    if group == "trainer" and option == "gpu" and not torch.cuda.is_available():
        pytest.skip("no GPU")
    if group == "model" and option == "toy_mlp":
        extra = ["data=toy"]
    if group == "logger" and option in ("mlflow", "many"):  # the local MLflow store in this test's folder
        pytest.importorskip("mlflow", reason="logger=mlflow needs mlflow")
        extra = [f"logger{'.mlflow' if option == 'many' else ''}.save_dir={tmp_path / 'mlruns'}"]
    cfg = cfg_factory(*SMALL, f"{group}={option}", *extra)
    train(cfg)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["iteration"] == 2
