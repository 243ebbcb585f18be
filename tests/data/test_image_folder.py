"""Image folders are read faithfully (by each file's bit depth) or refused in one line."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from ganexp.data.base import TensorDataModule
from ganexp.data.image_folder import ImageFolderDataModule
from ganexp.errors import ConfigError


def folder(path, **kwargs):
    dm = ImageFolderDataModule(path=str(path), **{"size": 8, "channels": 1, "batch_size": 4, **kwargs})
    dm.setup()
    return dm


def grey(path, value, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = {"L": np.uint8, "I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    Image.fromarray(np.full((8, 8), value, dtype=dtype)).save(path)


def opened(path, attribute):
    with Image.open(path) as image:
        return getattr(image, attribute)


def test_16_bit_pngs_are_scaled_by_65535_into_minus_one_one(tmp_path):
    for i, value in enumerate([0, 32768, 65535, 1000]):
        grey(tmp_path / f"{i}.png", value, "I;16")
    assert opened(tmp_path / "0.png", "mode") == "I;16"  # really 16 bits on disk
    data = folder(tmp_path).train_data
    assert data.min().item() == -1.0 and data.max().item() == 1.0
    assert data[1].flatten().tolist() == pytest.approx([32768 / 65535 * 2 - 1] * 64, abs=1e-6)
    assert data[3, 0, 0, 0].item() == pytest.approx(1000 / 65535 * 2 - 1, abs=1e-6)


def test_8_and_16_bit_files_of_the_same_brightness_agree_and_repeat_to_rgb(tmp_path):
    grey(tmp_path / "a.png", 255)
    grey(tmp_path / "b.png", 65535, "I;16")
    grey(tmp_path / "c.png", 51)  # 51/255 = 0.2
    grey(tmp_path / "d.png", 13107, "I;16")  # 13107/65535 = 0.2
    data = folder(tmp_path, channels=3).train_data
    assert data.shape == (4, 3, 8, 8)
    assert data[0].unique().tolist() == data[1].unique().tolist() == [1.0]
    assert data[2].unique().tolist() == pytest.approx([-0.6]) and data[3].unique().tolist() == pytest.approx([-0.6])


def test_32_bit_integer_tiffs_holding_16_bits_are_scaled_by_65535_and_wider_ones_refused(tmp_path):
    for i, value in enumerate([0, 65535, 32768, 0]):
        grey(tmp_path / f"{i}.tif", value, "I")
    assert opened(tmp_path / "1.tif", "mode") == "I"
    data = folder(tmp_path).train_data
    assert data[1].unique().tolist() == [1.0] and data[0].unique().tolist() == [-1.0]
    grey(tmp_path / "wide.tif", 70000, "I")
    with pytest.raises(ConfigError) as err:
        folder(tmp_path)
    assert "wide.tif" in str(err.value) and "70000" in str(err.value) and "\n" not in str(err.value)


def test_float_tiffs_in_zero_one_are_used_as_is_and_others_refused(tmp_path):
    for i, value in enumerate([0.0, 0.25, 1.0, 0.5]):
        grey(tmp_path / f"{i}.tif", value, "F")
    data = folder(tmp_path).train_data
    assert [data[i, 0, 0, 0].item() for i in range(4)] == [-1.0, -0.5, 1.0, 0.0]
    grey(tmp_path / "hdr.tif", 3.5, "F")
    with pytest.raises(ConfigError, match=r"hdr\.tif is a float image with values 3\.5\.\.3\.5, not in \[0, 1\]"):
        folder(tmp_path)


def test_hidden_files_and_folders_are_skipped_and_counted(tmp_path, caplog):
    for i in range(4):
        grey(tmp_path / f"{i}.png", 100)
    (tmp_path / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not a PNG")
    grey(tmp_path / ".hidden" / "x.png", 255)  # a real image, but hidden: skipped too
    with caplog.at_level(logging.INFO, logger="ganexp"):
        dm = folder(tmp_path)
    assert dm.train_data.shape == (4, 1, 8, 8)
    assert "read 4 images; skipped 2 hidden files" in caplog.text


def test_a_corrupt_file_is_refused_naming_it(tmp_path):
    for i in range(4):
        grey(tmp_path / f"{i}.png", 100)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ConfigError) as err:
        folder(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "broken.png") in message and "cannot be decoded" in message and "\n" not in message


def test_animated_gifs_give_their_first_frame_and_are_counted(tmp_path, caplog):
    for i in range(3):
        grey(tmp_path / f"{i}.png", 0)
    frames = [Image.new("L", (8, 8), v) for v in (255, 0, 128)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert opened(tmp_path / "anim.gif", "n_frames") == 3
    with caplog.at_level(logging.INFO, logger="ganexp"):
        data = folder(tmp_path).train_data
    assert len(data) == 4 and data[3].unique().tolist() == [1.0]  # one item, frame 0 (white)
    assert "took the first frame of 1 animated images" in caplog.text


@pytest.mark.parametrize("size", [-4, 0, 2.5, "8"])
def test_size_must_be_a_positive_integer(tmp_path, size):
    with pytest.raises(ConfigError) as err:
        ImageFolderDataModule(path=str(tmp_path), size=size, batch_size=4)
    assert str(err.value).startswith(f"data.size={size} ") and "\n" not in str(err.value)


@pytest.mark.parametrize("channels", [2, 4, 0])
def test_channels_must_be_1_or_3(tmp_path, channels):
    with pytest.raises(ConfigError, match=rf"^data.channels={channels} .*1 \(grey\) or 3 \(RGB\)$"):
        ImageFolderDataModule(path=str(tmp_path), channels=channels, batch_size=4)


class Fixed(TensorDataModule):
    """Serves `data` as loaded: stands for any datamodule's load()."""

    def __init__(self, data, **kwargs):
        super().__init__(batch_size=2, **kwargs)
        self.data = data

    def load(self):
        return self.data, None


def test_setup_refuses_images_outside_value_range_naming_class_range_and_cause():
    wrongly_scaled = torch.tensor([31.0, 486.0]).view(2, 1, 1, 1)
    with pytest.raises(ConfigError) as err:
        Fixed(wrongly_scaled).setup()
    assert str(err.value) == ("Fixed gives data in [31, 486] but data.value_range=[-1, 1]; "
                              "the images were probably scaled wrongly (e.g. 16-bit pixels / 255)")
    with pytest.raises(ConfigError, match=r"\[-0\.5, 1\] but data.value_range=\[0, 1\]"):
        Fixed(torch.tensor([-0.5, 1.0]).view(2, 1, 1, 1), value_range=(0, 1)).setup()
    with pytest.raises(ConfigError, match="nan"):
        Fixed(torch.tensor([0.0, float("nan")]).view(2, 1, 1, 1)).setup()


def test_setup_accepts_images_in_range_within_tolerance_and_unbounded_data():
    edge = Fixed(torch.tensor([-1.0 - 5e-5, 1.0 + 5e-5]).view(2, 1, 1, 1))
    edge.setup()
    assert edge.train_data.flatten().tolist() == pytest.approx([-1.0, 1.0], abs=1e-4)
    Fixed(torch.tensor([31.0, 486.0]).view(2, 1, 1, 1), value_range=None).setup()  # no range: nothing to check
    Fixed(torch.tensor([[31.0, 486.0], [0.0, 2.0]])).setup()  # points, not images: their own scale
