"""MNIST and Fashion-MNIST through torchvision, read from `data.root`.

`data.root` defaults to $GANEXP_DATA_DIR, else ./data. torchvision reads the
uncompressed IDX files under <root>/<Name>/raw/. Offline, a missing file fails at
once with one line naming the files and the fixes, instead of torchvision's long
download retries.
"""
from __future__ import annotations

import gzip
import shutil
import socket
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision

from ganexp.data.base import TensorDataModule, scale_unit
from ganexp.errors import ConfigError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist


def reachable(url: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((urlparse(url).hostname, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


class MNISTDataModule(TensorDataModule):
    dataset_cls = torchvision.datasets.MNIST
    metrics_name = "mnist"

    def __init__(self, root: str | None = None, download: bool = True, **kwargs):
        super().__init__(**kwargs)
        root = root or os.environ.get("GANEXP_DATA_DIR") or "./data"  # as conf/data/mnist.yaml says
        self.root, self.download = Path(root).expanduser(), download

    @property
    def raw_files(self) -> list[Path]:
        raw = self.root / self.dataset_cls.__name__ / "raw"
        return [raw / Path(name).stem for name, _ in self.dataset_cls.resources]  # names without .gz

    def _fill_from_system(self) -> None:
        """Hook for a system-wide copy of the files (Fashion-MNIST from Debian)."""

    def ensure_files(self) -> None:
        self._fill_from_system()
        missing = [p for p in self.raw_files if not p.is_file()]
        if not missing:
            return
        name = self.dataset_cls.__name__
        if self.download and reachable(self.dataset_cls.mirrors[0]):
            self.dataset_cls(str(self.root), train=True, download=True)
            return
        raise ConfigError(
            f"{name} not found: missing {', '.join(str(p) for p in missing)}"
            f"{'' if self.download else ' (data.download=false)'}, and no network to download it; "
            f"point to a folder holding {name}/raw/ with GANEXP_DATA_DIR=/path/to/data or data.root=/path/to/data"
        )

    def load(self):
        self.ensure_files()
        ds = self.dataset_cls(str(self.root), train=True, download=False)
        images = ds.data.unsqueeze(1).float() / 255.0
        return scale_unit(images, self.value_range), ds.targets.clone()

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 10,000 test images (uint8 [N, 1, 28, 28]) and labels, for metrics."""
        self.ensure_files()
        ds = self.dataset_cls(str(self.root), train=False, download=False)
        return ds.data.unsqueeze(1), ds.targets.clone()


class FashionMNISTDataModule(MNISTDataModule):
    dataset_cls = torchvision.datasets.FashionMNIST
    metrics_name = "fashion_mnist"

    def _fill_from_system(self) -> None:
        for target in self.raw_files:
            source = DEBIAN_FASHION_MNIST / (target.name + ".gz")
            if not target.is_file() and source.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                with gzip.open(source, "rb") as src, open(target.with_suffix(".part"), "wb") as dst:
                    shutil.copyfileobj(src, dst)
                target.with_suffix(".part").replace(target)
