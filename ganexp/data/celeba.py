"""CelebA's aligned faces from torchvision's layout: `<root>/celeba/img_align_celeba/*.jpg` and
`<root>/celeba/list_eval_partition.txt` (lines "000001.jpg 0": 0 train, 1 valid, 2 test).

Each 178×218 face is center-cropped to data.crop × data.crop (140 by default: the face and hair, little
background) and resized (antialiased) to data.size. No labels are read. Every JPEG is decoded when the split is
loaded (about 160,000 for train: minutes on a few CPU cores); a file that cannot be decoded is one line naming it.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torchvision.datasets import CelebA
from torchvision.transforms.v2 import functional as TF

from ganexp.config.checks import INT, number
from ganexp.data.base import scale_unit
from ganexp.data.image_folder import read_unit
from ganexp.data.rgb import TorchvisionFolder, damaged
from ganexp.errors import ConfigError

FOLDER = "celeba"
PARTITIONS = {"train": {"0"}, "valid": {"1"}, "test": {"2"}, "all": {"0", "1", "2"}}
MAX_LIST_BYTES = 8 * 2**20  # list_eval_partition.txt is 3.4 MB (202,599 lines)
LINE = re.compile(r"(\d{6}\.jpg) ([012])")  # a listed name is a plain file name, never a path


class CelebADataModule(TorchvisionFolder):
    title, url = "CelebA", "https://drive.google.com"
    splits = tuple(PARTITIONS)

    def __init__(self, crop: int = 140, size: int = 64, **kwargs):  # conf/data/celeba.yaml's defaults
        number("data.crop", crop, INT, lambda c: c >= 1, "a positive number of pixels, e.g. data.crop=140")
        self.crop = int(crop)
        super().__init__(size=size, **kwargs)

    @property
    def images(self) -> Path:
        return self.root / FOLDER / "img_align_celeba"

    def required(self) -> list[Path]:
        return [self.root / FOLDER / "list_eval_partition.txt", self.images]

    def files(self) -> list[Path]:
        """The split's images, in the partition file's order."""
        listing = self.required()[0]
        if not listing.is_file():  # a folder, or a FIFO (reading it would wait forever)
            raise damaged(listing, "is not a regular file", self.title)
        if (size := listing.stat().st_size) > MAX_LIST_BYTES:
            raise damaged(listing, f"is {size} bytes, more than CelebA's partition list ({MAX_LIST_BYTES} at most)",
                          self.title)
        names = []
        for row, line in enumerate(listing.read_bytes().decode("latin1").splitlines(), 1):
            if not line.strip():
                continue
            if not (match := LINE.fullmatch(line.strip())):
                raise damaged(listing, f"line {row} is {line[:60]!r}, not '<6 digits>.jpg <0, 1 or 2>'",
                              self.title)
            if match[2] in PARTITIONS[self.split]:
                names.append(match[1])
        if not names:
            raise damaged(listing, f"lists no image of the {self.split} split", self.title)
        return [self.images / name for name in names]

    def check(self) -> None:
        files = self.files()
        if not self.images.is_dir():
            raise damaged(self.images, "is not a folder of images", self.title)
        there = {p.name for p in self.images.iterdir() if p.is_file()}  # no FIFO (decoding it would wait forever)
        if missing := [p for p in files if p.name not in there]:
            raise ConfigError(f"{self.images} lacks {len(missing)} of the {len(files)} images of CelebA's {self.split} "
                              f"split ({missing[0].name} first); copy the whole img_align_celeba folder there")

    def count(self) -> int:
        return len(self.files())

    def fetch(self) -> None:  # Google Drive through gdown (pip install gdown); checks every file's md5
        CelebA(str(self.root), split="all", target_type=[], download=True)

    def read(self):
        files = self.files()
        images = torch.empty(len(files), 3, self.size, self.size)  # filled in place: one copy in memory
        for i, file in enumerate(files):
            image, _ = read_unit(file, 3)
            if min(image.shape[1:]) < self.crop:
                raise ConfigError(f"{file} is {image.shape[2]}x{image.shape[1]} pixels, smaller than data.crop="
                                  f"{self.crop}; use a smaller data.crop (CelebA's aligned faces are 178x218)")
            images[i] = scale_unit(TF.resize(TF.center_crop(image, self.crop), [self.size, self.size], antialias=True),
                                   self.value_range)
        return images, None
