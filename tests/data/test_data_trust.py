"""Data files someone else made: image bombs and damaged MNIST files are one line, before any run folder."""
from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import GifImagePlugin, Image

from ganexp.data.image_folder import ImageFolderDataModule
from ganexp.data.mnist import FashionMNISTDataModule, MNISTDataModule
from ganexp.errors import ConfigError
from tests.helpers import ROOT, data_dir_with, run_train

FIX = "; shrink it (data.size is all a run keeps) or remove it from the folder"


def image_folder(path: Path, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(path=str(path), **{"size": 8, "channels": 1, "batch_size": 2, **kwargs})


def good_images(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("L", (12, 12), i * 60).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """The issue's bomb: a real, decodable one-bit PNG of 13000x13000 pixels, 20 KB on disk (4 GB decoded)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (13000, 13000)).save(path)
    assert path.stat().st_size < 25_000
    return path


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height one-bit pixels and holds none: all a header check may read."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def gif(path: Path, frames: list[tuple[int, int]]) -> Path:
    """A GIF of a 1x1 screen whose frames (width, height) each hold one black pixel's LZW code."""
    data = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    for width, height in frames:
        data += b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    path.write_bytes(data + b"\x3b")
    return path


def test_a_bomb_png_is_refused_from_its_header_when_the_datamodule_is_built(tmp_path, bomb):
    folder = good_images(tmp_path / "images")
    (folder / "bomb.png").symlink_to(bomb)
    with pytest.raises(ConfigError) as err:
        image_folder(folder)  # the constructor: what train.py's command-line check builds, before Hydra's folder
    assert str(err.value) == f"{folder / 'bomb.png'} is 13000x13000 pixels (169 megapixels), over the 50 megapixels " \
                             f"ganexp decodes{FIX}"


def test_sizes_at_the_bound_pass_and_one_pixel_more_is_refused(tmp_path):
    folder = good_images(tmp_path / "images")
    png_header(folder / "edge.png", 10_000, 5_000)  # 50,000,000 pixels exactly: no decode is tried by the check
    image_folder(folder)
    png_header(folder / "edge.png", 10_000, 5_001)
    with pytest.raises(ConfigError, match=r"edge\.png is 10000x5001 pixels \(50 megapixels\), over the 50 megapixels"):
        image_folder(folder)


def test_a_header_beyond_pillows_own_limit_is_the_same_kind_of_line(tmp_path):
    folder = good_images(tmp_path / "images")
    png_header(folder / "huge.png", 60_000, 60_000)  # Pillow itself refuses to open it: no size to quote
    with pytest.raises(ConfigError) as err:
        image_folder(folder)
    assert str(err.value) == f"{folder / 'huge.png'} is over the 50 megapixels ganexp decodes{FIX}"


def test_a_gif_whose_first_frame_outgrows_its_screen_is_refused_by_that_frame(tmp_path):
    folder = good_images(tmp_path / "images")
    gif(folder / "wide.gif", [(9000, 9000), (1, 1)])  # a 1x1 screen; Pillow decodes frame 0 at 9000x9000
    with pytest.raises(ConfigError) as err:
        image_folder(folder)
    assert str(err.value) == f"{folder / 'wide.gif'} is 9000x9000 pixels (81 megapixels), over the 50 megapixels " \
                             f"ganexp decodes{FIX}"


def test_a_gif_of_many_frames_is_read_without_walking_them(tmp_path, monkeypatch, caplog):
    folder = good_images(tmp_path / "images", n=3)
    gif(folder / "many.gif", [(1, 1)] * 5000)
    seeks = []
    original = GifImagePlugin.GifImageFile._seek
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "_seek",
                        lambda self, frame, *args: seeks.append(frame) or original(self, frame, *args))
    dm = image_folder(folder)
    with caplog.at_level(logging.INFO, logger="ganexp"):
        dm.setup()
    assert max(seeks) == 1  # frame 0, and frame 1 to learn that it is animated: not 5,000 frames (n_frames)
    assert dm.train_data.shape == (4, 1, 8, 8) and dm.train_data[3].unique().tolist() == [-1.0]  # frame 0: black
    assert "took the first frame of 1 animated images" in caplog.text


def test_only_the_image_formats_of_the_extensions_are_opened(tmp_path):
    folder = good_images(tmp_path / "images")
    Image.new("L", (8, 8), 255).save(folder / "icon.png", format="ICO")  # a valid image, but not one of ours
    with pytest.raises(ConfigError) as err:
        image_folder(folder)
    assert str(err.value).startswith(f"{folder / 'icon.png'} cannot be decoded as an image (cannot identify image file")


@pytest.mark.slow
def test_a_bomb_swapped_in_after_the_check_is_refused_before_decoding_in_bounded_memory(tmp_path, bomb):
    """The check runs again right before each decode; the peak memory says nothing was decoded."""
    folder = good_images(tmp_path / "images")
    script = f"""
import json, os, resource, sys
from ganexp.data.image_folder import ImageFolderDataModule
from ganexp.errors import ConfigError
dm = ImageFolderDataModule(path={str(folder)!r}, size=8, channels=1, batch_size=2)
os.symlink({str(bomb)!r}, {str(folder / 'z.png')!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    dm.setup()
    error = None
except ConfigError as err:
    error = str(err)
print(json.dumps({{"error": error, "grew_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome["error"] == f"{folder / 'z.png'} is 13000x13000 pixels (169 megapixels), over the 50 megapixels " \
                               f"ganexp decodes{FIX}"
    assert outcome["grew_mb"] < 100  # decoded, it took 4,000 MB


# Damaged MNIST / Fashion-MNIST raw files: (file, damage, what the line says after the file's name).
FIXED = "; delete it so that torchvision downloads it again (data.download=true, with a network), or copy a good "


def _cut(n: int):
    return lambda data: data[:n]


def _put(offset: int, value: int):
    return lambda data: data[:offset] + struct.pack(">I", value) + data[offset + 4:]


DAMAGES = [
    ("train-images-idx3-ubyte", _cut(47_040_016 - 1000), "is truncated: 47039016 bytes, but 60000 images take 47040016"),
    ("train-labels-idx1-ubyte", _cut(50_000), "is truncated: 50000 bytes, but 60000 labels take 60008"),
    ("t10k-images-idx3-ubyte", _cut(0), "is empty (0 bytes)"),
    ("t10k-labels-idx1-ubyte", _cut(5), "is truncated: 5 bytes, shorter than its 8-byte IDX header"),
    ("train-images-idx3-ubyte", _put(0, 0x00000801),
     "is not an IDX file of images: it starts with 0x00000801, not 0x00000803"),
    ("t10k-labels-idx1-ubyte", lambda data: b"\x1f\x8b\x08\x00" + data[4:],  # a .gz saved under the raw name
     "is not an IDX file of labels: it starts with 0x1f8b0800, not 0x00000801"),
    ("train-labels-idx1-ubyte", lambda data: _put(4, 59_999)(data)[:-1],  # a whole file, one label short
     "holds 59999 labels; MNIST's train split has 60000"),
    ("train-images-idx3-ubyte", lambda data: _put(4, 50_000)(data)[:16 + 50_000 * 784],  # trained silently before
     "holds 50000 images; MNIST's train split has 60000"),
    ("train-images-idx3-ubyte", lambda data: _put(8, 32)(_put(12, 32)(data)), "holds 32x32 images; MNIST's are 28x28"),
    ("t10k-images-idx3-ubyte", lambda data: data + b"\x00" * 10, "is 7840026 bytes, but 10000 images take 7840016"),
    ("train-labels-idx1-ubyte", lambda data: data[:100] + b"\xc8" + data[101:],  # trained silently before
     "holds label 200; labels are 0..9"),
]


def damaged_root(tmp_path: Path, name: str, file: str, damage) -> Path:
    """A data.root of `name`'s real files, `file` a damaged copy, the others links to the originals."""
    source = data_dir_with(name)
    if source is None:
        pytest.skip(f"GANEXP_DATA_DIR does not hold {name}/raw/")
    raw = tmp_path / "root" / name / "raw"
    raw.mkdir(parents=True)
    for original in (source / name / "raw").iterdir():
        if original.name == file:
            (raw / file).write_bytes(damage(original.read_bytes()))
        else:
            (raw / original.name).symlink_to(original)
    return tmp_path / "root"


@pytest.mark.parametrize("file, damage, problem", DAMAGES, ids=[f"{f}: {p}" for f, _, p in DAMAGES])
def test_a_damaged_mnist_file_is_refused_naming_it_when_the_datamodule_is_built(tmp_path, file, damage, problem):
    root = damaged_root(tmp_path, "MNIST", file, damage)
    with pytest.raises(ConfigError) as err:
        MNISTDataModule(root=str(root), download=False, batch_size=10)
    assert str(err.value) == f"{root / 'MNIST' / 'raw' / file} {problem}{FIXED}MNIST file there"


def test_fashion_mnist_files_are_checked_as_fashion_mnist(tmp_path):
    root = damaged_root(tmp_path, "FashionMNIST", "train-images-idx3-ubyte", _put(12, 27))
    with pytest.raises(ConfigError) as err:
        FashionMNISTDataModule(root=str(root), download=False, batch_size=10)
    assert str(err.value) == (f"{root / 'FashionMNIST' / 'raw' / 'train-images-idx3-ubyte'} holds 28x27 images; "
                              f"FashionMNIST's are 28x28{FIXED}FashionMNIST file there")


def test_a_file_damaged_after_the_datamodule_was_built_is_refused_at_setup_and_for_the_test_split(tmp_path):
    root = damaged_root(tmp_path, "MNIST", "t10k-labels-idx1-ubyte", lambda data: data)
    dm = MNISTDataModule(root=str(root), download=False, batch_size=10)
    labels = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:9000])
    for read in (dm.setup, lambda: dm.split(train=False)):  # setup reads the train split, but the metrics need the test split too
        with pytest.raises(ConfigError) as err:
            read()
        assert str(err.value) == f"{labels} is truncated: 9000 bytes, but 10000 labels take 10008{FIXED}MNIST file there"


def test_debians_fashion_mnist_gzip_that_inflates_too_far_is_refused_and_nothing_written(tmp_path, monkeypatch):
    import gzip

    debian = tmp_path / "debian"
    debian.mkdir()
    with gzip.open(debian / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
        f.write(bytes(47_040_016 + 4096))  # a replaced package file: longer than the real one
    monkeypatch.setattr("ganexp.data.mnist.DEBIAN_FASHION_MNIST", debian)
    dm = FashionMNISTDataModule(root=str(tmp_path / "root"), download=False, batch_size=10)
    with pytest.raises(ConfigError) as err:
        dm.setup()
    assert str(err.value) == (f"{debian / 'train-images-idx3-ubyte.gz'} decompresses to more than 47040016 bytes, "
                              f"not the 47040016 of train-images-idx3-ubyte; reinstall dataset-fashion-mnist or copy "
                              f"the files into {tmp_path / 'root' / 'FashionMNIST' / 'raw'}")
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").rglob("*-ubyte*"))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["mnist", "bomb"])
def test_train_py_refuses_damaged_data_in_one_line_and_makes_no_run_folder(tmp_path, case, bomb):
    if case == "mnist":
        file = "train-images-idx3-ubyte"
        root = damaged_root(tmp_path, "MNIST", file, _cut(4000))
        args = ["data=mnist", f"data.root={root}"]
        line = f"{root / 'MNIST' / 'raw' / file} is truncated: 4000 bytes, but 60000 images take 47040016{FIXED}MNIST file there"
    else:
        folder = good_images(tmp_path / "images")
        (folder / "bomb.png").symlink_to(bomb)
        args = ["data=image_folder", f"data.path={folder}", "data.size=8", "batch_size=2"]
        line = f"{folder / 'bomb.png'} is 13000x13000 pixels (169 megapixels), over the 50 megapixels ganexp decodes{FIX}"
    result = run_train(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=300,
                       env={"HYDRA_FULL_ERROR": ""})  # its one-line errors, whatever the shell has
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [f"ganexp: error: {line}"]
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()
