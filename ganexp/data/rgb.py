"""What the RGB datasets (cifar10.py, stl10.py, celeba.py) share: torchvision's own folders under `data.root`.

`data.root` defaults to $GANEXP_DATA_DIR, else ./data, as for MNIST. The files a split needs are looked for
when the datamodule is built, i.e. before Hydra makes a run folder: a missing file with no way to download it
(data.download=false, or no network) is one line naming the files and both fixes. A damaged file is one line
naming it, then too for what is cheap to read (sizes; CIFAR-10's batches, whole; STL-10's labels; CelebA's
list), when the split is loaded for the rest (STL-10's pixels beyond their size, CelebA's JPEGs).
"""
from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ganexp.config.checks import INT, choice, flag, number
from ganexp.data.base import TensorDataModule, scale_unit
from ganexp.data.mnist import reachable
from ganexp.errors import ConfigError
from ganexp.io.files import machine_memory


def damaged(file: Path, problem: str, title: str) -> ConfigError:
    """The one line for a dataset file that is there but wrong."""
    return ConfigError(f"{file} {problem}; delete it so that it is downloaded again (data.download=true, with a "
                       f"network), or copy a good {title} file there")


def resized(images: Tensor, size: int, value_range, chunk: int = 2048) -> Tensor:
    """uint8 images [N, 3, H, W] → float32 [N, 3, size, size] in `value_range`, resized (antialiased) and scaled
    chunk by chunk: one float copy of the split in memory (CIFAR-10 at 64x64 is 2.5 GB of it), not three."""
    out = torch.empty(len(images), images.shape[1], size, size)
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].float() / 255.0
        if part.shape[-2:] != (size, size):
            part = TF.resize(part, [size, size], antialias=True)
        out[start:start + chunk] = scale_unit(part, value_range)
    return out


class TorchvisionFolder(TensorDataModule):
    """Subclasses name the dataset (`title`, `url` to probe, `splits`) and implement `required()` (the files the
    split needs), `check()` (refuse damaged files, as far as is cheap), `fetch()` (torchvision's download) and
    `read()` (float32 images [N, 3, size, size] in `value_range`, and labels or None)."""

    title = ""
    url = ""
    splits: tuple[str, ...] = ("train", "test")

    def __init__(self, root: str | None = None, download: bool = True, size: int = 32, split: str = "train",
                 **kwargs):
        super().__init__(**kwargs)
        number("data.size", size, INT, lambda s: s >= 1, "a positive number of pixels, e.g. data.size=32")
        choice("data.split", split, self.splits)
        root = root or os.environ.get("GANEXP_DATA_DIR") or "./data"  # as conf/data/<name>.yaml says
        self.root, self.download = Path(root).expanduser(), flag("data.download", download)
        self.size, self.split = int(size), split
        missing = self.missing()
        if missing and not (self.download and reachable(self.url)):
            raise self.not_found(missing)
        if not missing:
            self.checked()

    def checked(self) -> None:
        """check(), then the split's size at data.size against this machine's memory (one float32 copy)."""
        self.check()
        n = self.count()
        need, have = n * 3 * self.size**2 * 4, machine_memory()
        if need > have:
            most = int((have / (n * 12)) ** 0.5)
            raise ConfigError(f"data.size={self.size} makes {self.title}'s {n:,} {self.split} images {need / 2**30:,.1f} "
                              f"GiB as float32, more than this machine's {have / 2**30:,.1f} GiB; give data.size={most} "
                              "or less")

    def count(self) -> int:
        """The split's images, known once check() has passed."""
        raise NotImplementedError

    def regular(self, file: Path) -> None:
        """A dataset file must be a regular file (a folder, a FIFO or a device cannot be a batch)."""
        if not file.is_file():
            raise damaged(file, "is not a regular file", self.title)

    def required(self) -> list[Path]:
        raise NotImplementedError

    def check(self) -> None:
        raise NotImplementedError

    def fetch(self) -> None:
        raise NotImplementedError

    def read(self) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def missing(self) -> list[Path]:
        return [p for p in self.required() if not p.exists()]

    def not_found(self, missing: list[Path]) -> ConfigError:
        names = [str(p.relative_to(self.root)) for p in missing]
        listed = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        why = "data.download=false" if not self.download else "no network to download it"
        return ConfigError(
            f"{self.title} not found under data.root={self.root}: missing {listed} ({why}); run with a network "
            f"and data.download=true, or copy the files there (or point GANEXP_DATA_DIR=/path/to/data or "
            f"data.root=/path/to/data to a folder that holds them)")

    def ensure(self) -> None:
        """Download what is missing (the constructor saw that a network answers), then check it."""
        if missing := self.missing():
            try:
                self.fetch()
            except (OSError, RuntimeError, ImportError, urllib.error.URLError) as err:  # network, checksum, disk, gdown
                raise ConfigError(f"downloading {self.title} into {self.root} failed ({str(err).splitlines()[0]}); "
                                  f"copy the files there instead") from None
            if missing := self.missing():
                raise self.not_found(missing)
            self.checked()

    def load(self):
        self.ensure()
        return self.read()
