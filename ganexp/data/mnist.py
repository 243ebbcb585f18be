"""MNIST and Fashion-MNIST through torchvision, read from `data.root`.

`data.root` defaults to $GANEXP_DATA_DIR, else ./data; torchvision reads the IDX files under
<root>/<Name>/raw/. Offline, a missing file fails at once in one line, not after download retries. A damaged
file (from its header, size and labels) is refused in one line naming it when the datamodule is built.
"""
from __future__ import annotations

import gzip
import math
import os
import socket
import struct
import zlib
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision

from ganexp.io import writes
from ganexp.data.base import TensorDataModule, scale_unit
from ganexp.config.checks import INT, number
from ganexp.errors import ConfigError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
SPLITS = {"train": 60_000, "t10k": 10_000}  # items per split, the same in MNIST and Fashion-MNIST
IMAGE_SIZE = (28, 28)
IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801  # IDX magic numbers: unsigned bytes in 3 / 1 dimensions
CLASSES = 10


def idx_layout(file: Path) -> tuple[str, int, tuple[int, ...], int]:
    """What torchvision's raw `file` must hold: its kind (images / labels), magic number, dimensions, size in bytes."""
    n = SPLITS[file.name.split("-")[0]]
    images = "-images-" in file.name
    kind, magic, dims = ("images", IDX_IMAGES, (n, *IMAGE_SIZE)) if images else ("labels", IDX_LABELS, (n,))
    return kind, magic, dims, 4 * (1 + len(dims)) + math.prod(dims)


def check_idx(file: Path, dataset: str) -> None:
    """ConfigError naming `file` and what is wrong with it, unless it is a whole IDX file of `dataset`'s split."""
    kind, magic, dims, size = idx_layout(file)
    split = file.name.split("-")[0]

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{file} {problem}; delete it so that torchvision downloads it again (data.download=true, "
                           f"with a network), or copy a good {dataset} file there")

    header = 4 * (1 + len(dims))
    found = file.stat().st_size
    if found == 0:
        raise bad("is empty (0 bytes)")
    with open(file, "rb") as f:
        head = f.read(header)
    if len(head) < header:
        raise bad(f"is truncated: {found} bytes, shorter than its {header}-byte IDX header")
    first, *shape = struct.unpack(f">{1 + len(dims)}I", head)
    if first != magic:
        raise bad(f"is not an IDX file of {kind}: it starts with 0x{first:08x}, not 0x{magic:08x}")
    if kind == "images" and tuple(shape[1:]) != IMAGE_SIZE:
        raise bad(f"holds {'x'.join(map(str, shape[1:]))} images; {dataset}'s are {'x'.join(map(str, IMAGE_SIZE))}")
    if shape[0] != dims[0]:
        raise bad(f"holds {shape[0]} {kind}; {dataset}'s {split} split has {dims[0]}")
    if found != size:
        raise bad(f"{'is truncated: ' if found < size else 'is '}{found} bytes, but {dims[0]} {kind} take {size}")
    if kind == "labels":
        with open(file, "rb") as f:
            highest = max(f.read()[header:])
        if highest >= CLASSES:  # the metrics' classifier would index past its 10 outputs
            raise bad(f"holds label {highest}; labels are 0..{CLASSES - 1}")


def reachable(url: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((urlparse(url).hostname, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


class MNISTDataModule(TensorDataModule):
    dataset_cls = torchvision.datasets.MNIST
    metrics_name = "mnist"

    def __init__(self, root: str | None = None, download: bool = True, subset: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if subset is not None:  # the first `subset` training images: a small-data study (DiffAugment's)
            number("data.subset", subset, INT, lambda v: v >= 1, "an integer >= 1, or null for all of them")
        self.subset = subset
        root = root or os.environ.get("GANEXP_DATA_DIR") or "./data"  # as conf/data/mnist.yaml says
        self.root, self.download = Path(root).expanduser(), download
        self.check_files()  # the files already there; a missing one is downloaded (or refused) at setup

    @property
    def raw_files(self) -> list[Path]:
        raw = self.root / self.dataset_cls.__name__ / "raw"
        return [raw / Path(name).stem for name, _ in self.dataset_cls.resources]  # names without .gz

    def _fill_from_system(self) -> None:
        """Hook for a system-wide copy of the files (Fashion-MNIST from Debian)."""

    def check_files(self) -> None:
        for file in self.raw_files:
            if file.is_file():
                check_idx(file, self.dataset_cls.__name__)

    def ensure_files(self) -> None:
        self._fill_from_system()
        missing = [p for p in self.raw_files if not p.is_file()]
        name = self.dataset_cls.__name__
        if missing and self.download and reachable(self.dataset_cls.mirrors[0]):
            self.dataset_cls(str(self.root), train=True, download=True)
            missing = []
        if not missing:
            self.check_files()
            return
        raise ConfigError(
            f"{name} not found: missing {', '.join(str(p) for p in missing)}"
            f"{'' if self.download else ' (data.download=false)'}, and no network to download it; "
            f"point to a folder holding {name}/raw/ with GANEXP_DATA_DIR=/path/to/data or data.root=/path/to/data"
        )

    def split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images [N, 1, 28, 28] and labels of the train or test split (the metrics read both)."""
        self.ensure_files()
        ds = self.dataset_cls(str(self.root), train=train, download=False)
        return ds.data.unsqueeze(1).clone(), ds.targets.clone()

    def load(self):
        images, labels = self.split(train=True)
        images, labels = images[:self.subset], labels[:self.subset]
        return scale_unit(images.float() / 255.0, self.value_range), labels


class FashionMNISTDataModule(MNISTDataModule):
    dataset_cls = torchvision.datasets.FashionMNIST
    metrics_name = "fashion_mnist"

    def _fill_from_system(self) -> None:
        for target in self.raw_files:
            source = DEBIAN_FASHION_MNIST / (target.name + ".gz")
            if not target.is_file() and source.is_file():
                size = idx_layout(target)[3]
                try:
                    with gzip.open(source, "rb") as src:
                        data = src.read(size + 1)  # no more than a whole file: a replaced .gz cannot fill the disk
                except (OSError, EOFError, zlib.error) as err:
                    raise ConfigError(f"{source} cannot be decompressed ({err}); reinstall dataset-fashion-mnist "
                                      f"or copy the files into {target.parent}") from None
                if len(data) != size:
                    got = f"more than {size}" if len(data) > size else len(data)
                    raise ConfigError(f"{source} decompresses to {got} bytes, not the {size} of {target.name}; "
                                      f"reinstall dataset-fashion-mnist or copy the files into {target.parent}")
                writes.replace_bytes(target, data)
