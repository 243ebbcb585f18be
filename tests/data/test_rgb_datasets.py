"""CIFAR-10, STL-10 and CelebA from tiny files in torchvision's exact on-disk formats, written here: the pixels
land where they should, labels and splits are right, and missing, damaged or malicious files are one line."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from ganexp.data.celeba import CelebADataModule
from ganexp.data.cifar10 import ALLOWED, CIFAR10DataModule
from ganexp.data.stl10 import STL10DataModule
from ganexp.errors import ConfigError
from ganexp.models.dcgan import DCGANDiscriminator, DCGANGenerator
from ganexp.models.mlp import MLPDiscriminator, MLPGenerator
from tests.helpers import run_train
from tests.helpers.rgb_data import PER_BATCH, gradient_image, write_celeba, write_cifar, write_stl

FIX = "; delete it so that it is downloaded again (data.download=true, with a network), or copy a good"


def unit(value: float) -> float:
    """A uint8 pixel value as the datamodule gives it in [-1, 1]."""
    return value / 255 * 2 - 1


def cifar(root, **kwargs) -> CIFAR10DataModule:
    return CIFAR10DataModule(**{"root": str(root), "download": False, "batch_size": 4, **kwargs})


@pytest.mark.parametrize("binary", [False, True], ids=["python", "binary"])
def test_cifar10_decodes_channel_major_pixels_labels_and_the_train_split(tmp_path, binary):
    write_cifar(tmp_path, binary)
    dm = cifar(tmp_path)
    dm.setup()
    images, labels = dm.train_data, dm.labels
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.float32
    assert -1 <= images.min() and images.max() <= 1
    first = gradient_image(32)
    assert images[0, 0, 5, 31].item() == pytest.approx(unit(first[0, 5, 31]))  # red at x=31: 248
    assert images[0, 0, 5, 0].item() == pytest.approx(-1.0)
    assert images[0, 1, 31, 5].item() == pytest.approx(unit(248))  # green grows along y
    assert images[0, 2].unique().tolist() == pytest.approx([unit(200)])
    assert labels.tolist() == [(b + i) % 10 for b in range(5) for i in range(PER_BATCH)]  # batches 1..5, in order
    test = cifar(tmp_path, split="test")
    test.setup()
    assert len(test.train_data) == PER_BATCH and test.labels.tolist() == [5, 6, 7, 8]


def test_cifar10_resized_to_data_size(tmp_path):
    write_cifar(tmp_path)
    dm = cifar(tmp_path, size=16, shape=[3, 16, 16])
    dm.setup()
    assert dm.train_data.shape == (20, 3, 16, 16)
    red = dm.train_data[0, 0, 8]  # the gradient survives the antialiased resize: rising left to right
    assert (red[1:] > red[:-1]).all() and red[0] < -0.8 and red[-1] > 0.8


def test_the_unpickler_allows_numpys_array_names_and_nothing_else():
    assert set(ALLOWED) == {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                            ("numpy", "ndarray"), ("numpy", "dtype")}


class RunsCode:
    def __reduce__(self):
        return os.system, ("touch PWNED",)


def test_a_cifar10_pickle_that_would_run_code_is_refused_in_one_line_and_runs_nothing(tmp_path, monkeypatch):
    folder = write_cifar(tmp_path / "root")
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": RunsCode(), b"labels": [0]}, protocol=4))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        cifar(tmp_path / "root")  # read when the datamodule is built: before any run folder
    assert str(err.value) == (f"{folder / 'data_batch_3'} is not a CIFAR-10 batch: UnpicklingError: it asks for "
                              f"posix.system, which a CIFAR-10 batch never holds (a pickle that would run code?){FIX} "
                              "CIFAR-10 file there")
    assert not list(tmp_path.rglob("PWNED"))


class CallsNdarray:
    def __reduce__(self):
        return np.ndarray, ((2, 3072), "u1")


# 77 bytes that ask numpy for an array of 300 million objects (2.4 GB) before anything could check it
BOMB = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01J" + (300_000_000).to_bytes(4, "little")
        + b"\x85q\x02U\x01Oq\x03\x87q\x04Rq\x05.")


@pytest.mark.parametrize("damage, problem", [
    (lambda f: f.write_bytes(f.read_bytes()[:5000]), "is truncated: its pickle ends before its data does"),
    (lambda f: f.write_bytes(b""), "is empty (0 bytes)"),
    (lambda f: f.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]})),
     "holds label 10; labels are 0..9"),
    (lambda f: f.write_bytes(pickle.dumps({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0] * 4})),
     "holds data of uint8 [4, 1024], not uint8 [N, 3072]"),
    (lambda f: f.write_bytes(pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0] * 4})),
     "holds 3 images and 4 labels; a batch holds as many labels as images, at most 10000"),
    (lambda f: f.write_bytes(pickle.dumps([1, 2])), "holds a list, not a CIFAR-10 batch's dict"),
    (lambda f: f.write_bytes(bytes(32 * 2**20 + 1)), f"is {32 * 2**20 + 1} bytes, more than a CIFAR-10 batch"),
    (lambda f: f.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [2**70, 0, 0, 0]})),
     "holds no list of integer labels"),
    (lambda f: f.write_bytes(BOMB), "is not a CIFAR-10 batch: UnpicklingError: it builds an array from (300000000,)"),
    (lambda f: f.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4})),
     "is not a CIFAR-10 batch: UnpicklingError: it holds an array of 'f4'"),
    (lambda f: f.write_bytes(pickle.dumps({b"data": CallsNdarray(), b"labels": [0, 0]}, protocol=3)),
     "is not a CIFAR-10 batch: TypeError"),  # np.ndarray((2, 3072), "u1"): memory left in the process, as images
    (lambda f: (f.unlink(), f.mkdir()), "is not a regular file"),
], ids=["truncated", "empty", "label", "shape", "count", "list", "huge", "huge-label", "bomb", "float", "ndarray-call",
        "folder"])
def test_a_damaged_cifar10_batch_is_one_line_naming_it(tmp_path, damage, problem):
    file = write_cifar(tmp_path) / "data_batch_2"
    damage(file)
    with pytest.raises(ConfigError) as err:
        cifar(tmp_path)
    assert str(err.value).startswith(f"{file} {problem}") and str(err.value).endswith(f"{FIX} CIFAR-10 file there")
    assert "\n" not in str(err.value)


def test_a_data_size_this_machines_memory_cannot_hold_is_refused_naming_the_largest_that_fits(tmp_path, monkeypatch):
    import ganexp.data.rgb as rgb

    write_cifar(tmp_path)  # 5 batches of PER_BATCH images
    n = 5 * PER_BATCH
    monkeypatch.setattr(rgb, "machine_memory", lambda: n * 12 * 32 * 32 - 1)
    with pytest.raises(ConfigError, match=rf"^data.size=32 makes CIFAR-10's {n} train images 0.0 GiB as float32, more "
                                          r"than this machine's 0.0 GiB; give data.size=31 or less$"):
        cifar(tmp_path, size=32)
    assert len(cifar(tmp_path, size=31).load()[0]) == n


def test_a_binary_cifar10_batch_cut_short_is_refused_naming_it(tmp_path):
    folder = write_cifar(tmp_path, binary=True)
    file = folder / "data_batch_4.bin"
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(ConfigError, match=f"^{file} is 12192 bytes, not a whole number of 3073-byte records"):
        cifar(tmp_path)
    file.write_bytes(file.read_bytes()[:3073])  # a whole record: shorter than the other batches
    with pytest.raises(ConfigError, match=f"^{file} holds 1 images, the other batches 4: truncated"):
        cifar(tmp_path)


def test_missing_cifar10_names_the_files_under_the_root_and_both_fixes(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as err:
        cifar(tmp_path)
    assert str(err.value) == (
        f"CIFAR-10 not found under data.root={tmp_path}: missing cifar-10-batches-py/data_batch_1, "
        "cifar-10-batches-py/data_batch_2, cifar-10-batches-py/data_batch_3, cifar-10-batches-py/data_batch_4, "
        "cifar-10-batches-py/data_batch_5 (data.download=false); run with a network and data.download=true, or copy "
        "the files there (or point GANEXP_DATA_DIR=/path/to/data or data.root=/path/to/data to a folder that holds "
        "them)")
    monkeypatch.setattr("ganexp.data.rgb.reachable", lambda url: False)
    with pytest.raises(ConfigError, match=r"data_batch_5 \(no network to download it\); run with a network"):
        cifar(tmp_path, download=True)


def test_a_missing_cifar10_with_a_network_is_downloaded_by_torchvision_then_read_safely(tmp_path, monkeypatch):
    monkeypatch.setattr("ganexp.data.rgb.reachable", lambda url: True)
    fetched = []
    monkeypatch.setattr("ganexp.data.cifar10.download_and_extract_archive",
                        lambda url, root, **kw: fetched.append((url, root, kw)) or write_cifar(tmp_path))
    dm = cifar(tmp_path, download=True)  # nothing is fetched for a check
    assert not fetched
    dm.setup()
    assert fetched == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", str(tmp_path),
                        {"filename": "cifar-10-python.tar.gz", "md5": "c58f30108f718f92721af3b95e74349a"})]
    assert len(dm.train_data) == 20


def stl(root, **kwargs) -> STL10DataModule:
    return STL10DataModule(**{"root": str(root), "download": False, "batch_size": 2, **kwargs})


def test_stl10_decodes_column_major_pixels_and_labels_of_each_split(tmp_path):
    write_stl(tmp_path)
    dm = stl(tmp_path, split="train", size=96)
    dm.setup()
    first = gradient_image(96)
    assert dm.train_data.shape == (3, 3, 96, 96) and dm.labels.tolist() == [0, 1, 2]
    assert dm.train_data[0, 0, 7, 95].item() == pytest.approx(unit(first[0, 7, 95]))  # red grows along x
    assert dm.train_data[0, 0, 7, 0].item() == pytest.approx(-1.0)
    assert dm.train_data[0, 1, 95, 7].item() == pytest.approx(unit(first[1, 95, 7]))  # green along y
    small = stl(tmp_path, split="train+unlabeled")  # 32 by default
    small.setup()
    assert small.train_data.shape == (7, 3, 32, 32) and small.labels is None
    red = small.train_data[0, 0, 16]
    assert (red[1:] > red[:-1]).all() and -1 <= small.train_data.min() and small.train_data.max() <= 1
    unlabeled = stl(tmp_path)  # conf/data/stl10.yaml's default
    unlabeled.setup()
    assert len(unlabeled.train_data) == 4 and unlabeled.labels is None


@pytest.mark.parametrize("file, damage, problem", [
    ("train_X.bin", lambda d: d[:-1],
     "is 82943 bytes, not a whole number of 27648-byte images (at most 5000): truncated?"),
    ("train_y.bin", lambda d: d[:2], "holds 2 labels for the 3 images of train_X.bin"),
    ("train_y.bin", lambda d: b"\x00" + d[1:], "holds label 0; STL-10's labels are 1..10"),
    ("train_X.bin", lambda d: b"", "is 0 bytes, not a whole number of 27648-byte images (at most 5000): truncated?"),
], ids=["truncated", "count", "label", "empty"])
def test_a_damaged_stl10_file_is_one_line_naming_it(tmp_path, file, damage, problem):
    path = write_stl(tmp_path) / file
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ConfigError) as err:
        stl(tmp_path, split="train")
    assert str(err.value) == f"{path} {problem}{FIX} STL-10 file there"


def test_missing_stl10_names_only_the_files_of_its_split(tmp_path):
    with pytest.raises(ConfigError, match=r"STL-10 not found under data.root=.*: missing stl10_binary/train_X.bin, "
                                          r"stl10_binary/train_y.bin, stl10_binary/unlabeled_X.bin \(data.download"):
        stl(tmp_path, split="train+unlabeled")


def celeba(root, **kwargs) -> CelebADataModule:
    return CelebADataModule(**{"root": str(root), "download": False, "batch_size": 2, "crop": 16, "size": 8,
                               **kwargs})


def test_celeba_is_center_cropped_and_resized_from_the_train_partition(tmp_path):
    write_celeba(tmp_path)
    dm = celeba(tmp_path)
    dm.setup()
    assert dm.train_data.shape == (2, 3, 8, 8) and dm.labels is None  # 000001 and 000003: partition 0
    assert dm.train_data.mean().item() > 0.95  # the crop is the white square (JPEG's ringing aside)
    wide = celeba(tmp_path, crop=20)  # the whole width: the black border comes in
    wide.setup()
    assert wide.train_data.mean().item() == pytest.approx(256 / 400 * 2 - 1, abs=0.05)  # 16x16 white of 20x20
    every = celeba(tmp_path, split="all")
    every.setup()
    assert len(every.train_data) == 4


def test_celeba_refuses_a_missing_image_a_bad_list_and_a_small_image_in_one_line(tmp_path):
    folder = write_celeba(tmp_path)
    (folder / "000003.jpg").unlink()
    with pytest.raises(ConfigError, match=f"^{folder} lacks 1 of the 2 images of CelebA's train split "
                                          r"\(000003.jpg first\); copy the whole img_align_celeba folder there$"):
        celeba(tmp_path)
    listing = tmp_path / "celeba" / "list_eval_partition.txt"
    listing.write_text("000001.jpg 0\n../../etc/passwd 0\n")
    with pytest.raises(ConfigError, match=f"^{listing} line 2 is '../../etc/passwd 0', not"):
        celeba(tmp_path)
    listing.write_text("000001.jpg 0\n")
    dm = celeba(tmp_path, crop=21)
    with pytest.raises(ConfigError, match=f"^{folder / '000001.jpg'} is 20x24 pixels, smaller than data.crop=21"):
        dm.setup()
    (folder / "000001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ConfigError, match=f"^{folder / '000001.jpg'} cannot be decoded as an image"):
        celeba(tmp_path).setup()


@pytest.mark.parametrize("size", [32, 64])
def test_dcgan_and_the_mlp_take_rgb_images(size):
    shape = (3, size, size)
    z = torch.randn(2, 100)
    for g, d in ((DCGANGenerator(100, shape, width=8), DCGANDiscriminator(shape, width=8, spectral_norm=True)),
                 (MLPGenerator(100, shape, hidden=[16]), MLPDiscriminator(shape, hidden=[16]))):
        fake = g(z)
        assert fake.shape == (2, *shape) and d(fake).shape == (2,)


@pytest.mark.slow
def test_train_py_trains_dcgan_on_cifar10_files_end_to_end(tmp_path):
    write_cifar(tmp_path / "data")
    result = run_train("data=cifar10", "model=dcgan", "eval=none", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=2", f"data.root={tmp_path / 'data'}", "batch_size=8",
                       "model.generator.width=8", "model.discriminator.width=8", "n_fixed=4",
                       "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(next(tmp_path.glob("outputs/*/*/metrics.json")).read_text())
    assert record["status"] == "finished" and record["iteration"] == 2


@pytest.mark.slow
def test_train_py_without_cifar10_is_one_line_exit_2_and_no_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_train("data=cifar10", f"data.root={tmp_path / 'empty'}", "data.download=false", cwd=tmp_path,
                       timeout=120, env={"HYDRA_FULL_ERROR": ""})
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ganexp: error: CIFAR-10 not found under data.root={tmp_path}")
    assert not (tmp_path / "outputs").exists()


def test_the_sngan_discriminator_has_spectral_norm_and_no_batch_norm():
    d = DCGANDiscriminator((3, 32, 32), width=8, spectral_norm=True, batch_norm=False)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    assert len(convs) == 3 and all(c.bias is not None and hasattr(c, "parametrizations") for c in convs)
    with pytest.raises(ConfigError, match="model.discriminator.batch_norm=1 is not true or false"):
        DCGANDiscriminator((3, 32, 32), batch_norm=1)


@pytest.mark.parametrize("experiment", ["cifar10_dcgan", "cifar10_hinge_sn"])
def test_the_cifar10_experiments_compose_with_the_papers_settings(tmp_path, experiment):
    from tests.helpers import make_cfg

    cfg = make_cfg(tmp_path, f"experiment={experiment}")
    assert cfg.data._target_.endswith("CIFAR10DataModule") and list(cfg.data.shape) == [3, 32, 32]
    assert cfg.model.generator._target_.endswith("DCGANGenerator") and cfg.optimizer.lr == 2e-4
    settings = (cfg.loss.name, list(cfg.optimizer.betas), cfg.batch_size, cfg.d_steps, cfg.noise.latent_dim,
                cfg.model.discriminator.spectral_norm, cfg.model.discriminator.batch_norm)
    assert settings == {"cifar10_dcgan": ("nonsaturating", [0.5, 0.999], 128, 1, 100, False, True),
                        "cifar10_hinge_sn": ("hinge", [0.0, 0.9], 64, 5, 100, True, False)}[experiment]


@pytest.mark.parametrize("case", ["fifo-list", "fifo-image", "list-is-a-folder", "images-is-a-file"])
def test_celeba_files_that_are_not_files_are_one_line_and_never_wait(tmp_path, case):
    import shutil

    write_celeba(tmp_path)
    folder = tmp_path / "celeba"
    listing, images = folder / "list_eval_partition.txt", folder / "img_align_celeba"
    if case == "fifo-list":
        listing.unlink()
        os.mkfifo(listing)
    elif case == "fifo-image":
        first = sorted(images.iterdir())[0]
        first.unlink()
        os.mkfifo(first)
    elif case == "list-is-a-folder":
        listing.unlink()
        listing.mkdir()
    else:
        shutil.rmtree(images)
        images.write_bytes(b"not a folder")
    with pytest.raises(ConfigError) as err:
        CelebADataModule(root=str(tmp_path), download=False, batch_size=4)
    assert len(str(err.value).splitlines()) == 1
    assert ("is not a regular file" in str(err.value) if "list" in case else
            "lacks 1 of" in str(err.value) if case == "fifo-image" else "is not a folder of images" in str(err.value))
