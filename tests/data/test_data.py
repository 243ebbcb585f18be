import time

import pytest
import torch
from PIL import Image

from ganexp.data.base import EpochBatchSampler
from ganexp.data.digits import DigitsDataModule
from ganexp.data.image_folder import ImageFolderDataModule
from ganexp.data.mnist import FashionMNISTDataModule, MNISTDataModule
from ganexp.data.toy import ToyDataModule
from ganexp.errors import ConfigError
from tests.helpers import data_dir_with


def test_digits_train_on_the_1437_images_the_metrics_do_not_test_on():
    dm = DigitsDataModule(batch_size=64, shape=(1, 8, 8))
    dm.setup()
    assert dm.train_data.shape == (1437, 1, 8, 8)
    assert dm.train_data.min().item() == -1.0 and dm.train_data.max().item() == 1.0
    assert dm.labels.bincount().sum().item() == 1437
    from ganexp.metrics.classifier import load_split

    test, _ = load_split("digits", train=False)  # the metrics' reference images
    train, _ = load_split("digits", train=True)
    as_uint8 = ((dm.train_data + 1) / 2 * 255).round().to(torch.uint8)
    assert torch.equal(as_uint8, train)  # one split function: the GAN's set is the classifier's train split
    gan_rows = {bytes(x.flatten().tolist()) for x in as_uint8}
    test_rows = [bytes(x.flatten().tolist()) for x in test]
    assert len(test_rows) == 360 and not any(r in gan_rows for r in test_rows)  # disjoint, pixel for pixel


def test_value_range_zero_one():
    dm = DigitsDataModule(batch_size=64, value_range=(0, 1))
    dm.setup()
    assert dm.train_data.min().item() == 0.0 and dm.train_data.max().item() == 1.0


def test_sampler_reshuffles_each_epoch_and_drops_the_last_partial_batch():
    sampler = EpochBatchSampler(n=100, batch_size=32, seed=0)
    first = torch.cat(list(sampler))
    sampler.set_epoch(1)
    second = torch.cat(list(sampler))
    assert len(sampler) == 3 and len(first) == 96 and len(set(first.tolist())) == 96
    assert not torch.equal(first, second)
    sampler.set_epoch(0)
    assert torch.equal(torch.cat(list(sampler)), first)  # the order is a function of (seed, epoch)


def test_sampler_shards_are_disjoint_across_ranks():
    shards = [set(torch.cat(list(EpochBatchSampler(100, 10, 0, rank=r, world_size=2))).tolist()) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 50 and not shards[0] & shards[1]


def test_dataloader_yields_device_tensor_batches_without_collate():
    dm = DigitsDataModule(batch_size=50)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert len(batches) == 1437 // 50 and batches[0].shape == (50, 1, 8, 8)


@pytest.mark.parametrize("dist, n_modes", [("ring", 8), ("grid", 25)])
def test_toy_mode_distributions(dist, n_modes):
    dm = ToyDataModule(dist=dist, n=5000, standardize=False, batch_size=100)
    dm.setup()
    assert dm.train_data.shape == (5000, 2)
    assert dm.labels.unique().numel() == n_modes


def test_toy_quadratic_is_seed_002s_curve():
    dm = ToyDataModule(dist="quadratic", n=2000, standardize=False, batch_size=100)
    dm.setup()
    x, y = dm.train_data.T
    assert x.min() >= -50 and x.max() <= 50
    assert torch.allclose(y, 10 + x**2)
    standardized = ToyDataModule(dist="quadratic", n=2000, standardize=True, batch_size=100)
    standardized.setup()
    assert standardized.train_data.mean(0).abs().max() < 1e-4
    assert torch.allclose(standardized.train_data * standardized.std + standardized.mean, dm.train_data, atol=1e-2)


def test_image_folder(tmp_path):
    for i in range(5):
        Image.new("RGB", (40, 30), (i * 50, 0, 255)).save(tmp_path / f"{i}.png")
    dm = ImageFolderDataModule(path=str(tmp_path), size=16, channels=3, batch_size=2, shape=(3, 16, 16))
    dm.setup()
    assert dm.train_data.shape == (5, 3, 16, 16)
    assert dm.train_data[0, 2].mean().item() == pytest.approx(1.0)  # blue 255 → +1
    assert dm.train_data[0, 0].mean().item() == pytest.approx(-1.0)


def test_image_folder_without_images(tmp_path):
    with pytest.raises(ConfigError, match="holds no images"):
        ImageFolderDataModule(path=str(tmp_path), batch_size=2).setup()


def test_missing_mnist_fails_at_once_with_files_and_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setattr("ganexp.data.mnist.reachable", lambda url, timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        MNISTDataModule(root=str(tmp_path), batch_size=10).setup()
    message = str(err.value)
    assert time.perf_counter() - start < 2
    assert "\n" not in message
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert "GANEXP_DATA_DIR=" in message and "data.root=" in message


def test_batch_larger_than_dataset():
    with pytest.raises(ConfigError, match="batch_size=5000 is larger than the dataset"):
        DigitsDataModule(batch_size=5000).setup()


@pytest.mark.parametrize("cls, name", [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")])
def test_real_mnist_like_datasets(cls, name):
    root = data_dir_with(name)
    if root is None:
        pytest.skip(f"GANEXP_DATA_DIR does not hold {name}/raw/")
    dm = cls(root=str(root), batch_size=100, shape=(1, 28, 28))
    dm.setup()
    assert dm.train_data.shape == (60_000, 1, 28, 28)
    assert dm.train_data.min().item() == -1.0 and dm.train_data.max().item() == 1.0
    mean = ((dm.train_data + 1) / 2).mean().item()
    assert mean == pytest.approx({"MNIST": 0.1307, "FashionMNIST": 0.2860}[name], abs=1e-3)
    images, labels = dm.split(train=False)
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == torch.uint8 and labels.unique().numel() == 10
    small = cls(root=str(root), batch_size=100, shape=(1, 28, 28), subset=1000)  # data.subset: the first 1,000
    small.setup()
    assert torch.equal(small.train_data, dm.train_data[:1000]) and torch.equal(small.labels, dm.labels[:1000])


@pytest.mark.parametrize("subset", [0, -5, 2.5, "all"])
def test_a_bad_mnist_subset_is_one_line(subset, tmp_path):
    with pytest.raises(ConfigError, match=f"data.subset={subset} is .*; use an integer >= 1, or null for all of them"):
        MNISTDataModule(root=str(tmp_path), batch_size=10, subset=subset)


@pytest.mark.slow
def test_fashion_mnist_from_debians_gzip_files(tmp_path, monkeypatch):
    import gzip
    import shutil

    source = data_dir_with("FashionMNIST")
    if source is None:
        pytest.skip("GANEXP_DATA_DIR does not hold FashionMNIST")
    debian = tmp_path / "debian"  # the layout of Debian's dataset-fashion-mnist package
    debian.mkdir()
    for raw in (source / "FashionMNIST" / "raw").iterdir():
        with open(raw, "rb") as src, gzip.open(debian / f"{raw.name}.gz", "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst)
    monkeypatch.setattr("ganexp.data.mnist.DEBIAN_FASHION_MNIST", debian)
    dm = FashionMNISTDataModule(root=str(tmp_path / "root"), download=False, batch_size=100)
    dm.setup()
    assert dm.train_data.shape == (60_000, 1, 28, 28)
    assert (tmp_path / "root" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
