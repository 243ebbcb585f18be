"""STL-10 from torchvision's download (`<root>/stl10_binary/`), 96×96 RGB resized to data.size (32 by default).

Each image is 27,648 bytes: the red plane, then green, then blue, each stored column by column (as MATLAB
writes it; torchvision transposes it back). Labels are bytes 1..10 (0..9 here). The unlabeled split (100,000
images, no labels) is what GAN papers train on; train (5,000) and test (8,000) have labels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import STL10
from torchvision.datasets.utils import download_and_extract_archive

from ganexp.data.rgb import TorchvisionFolder, damaged, resized

FOLDER = "stl10_binary"
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
COUNTS = {"train": 5_000, "test": 8_000, "unlabeled": 100_000}  # images per file: no file holds more
CLASSES = 10
CHUNK = 4096  # images read, transposed and resized at a time (0.1 GB as uint8)


class STL10DataModule(TorchvisionFolder):
    title, url = "STL-10", STL10.url
    splits = ("unlabeled", "train", "test", "train+unlabeled")

    def __init__(self, split: str = "unlabeled", **kwargs):  # GAN papers train on the 100,000 unlabeled images
        super().__init__(split=split, **kwargs)

    @property
    def parts(self) -> list[str]:
        return self.split.split("+")

    def required(self) -> list[Path]:
        folder = self.root / FOLDER
        return [folder / f"{part}_{kind}.bin" for part in self.parts for kind in ("X", "y")
                if part != "unlabeled" or kind == "X"]

    def check(self) -> None:
        for file in self.required():
            self.regular(file)
        for part in self.parts:
            images = self.root / FOLDER / f"{part}_X.bin"
            size = images.stat().st_size
            if size == 0 or size % IMAGE_BYTES or size > COUNTS[part] * IMAGE_BYTES:
                raise damaged(images, f"is {size} bytes, not a whole number of {IMAGE_BYTES}-byte images (at most "
                                      f"{COUNTS[part]}): truncated?", self.title)
            if part != "unlabeled":
                labels = self.root / FOLDER / f"{part}_y.bin"
                if labels.stat().st_size != size // IMAGE_BYTES:
                    raise damaged(labels, f"holds {labels.stat().st_size} labels for the {size // IMAGE_BYTES} images "
                                          f"of {images.name}", self.title)
                values = np.fromfile(labels, dtype=np.uint8)
                if values.size and not 1 <= values.min() <= values.max() <= CLASSES:
                    bad = values.max() if values.max() > CLASSES else values.min()
                    raise damaged(labels, f"holds label {bad}; STL-10's labels are 1..{CLASSES}", self.title)

    def count(self) -> int:
        return sum((self.root / FOLDER / f"{part}_X.bin").stat().st_size // IMAGE_BYTES for part in self.parts)

    def fetch(self) -> None:  # the archive only: STL10(download=True) would also read every split it got
        download_and_extract_archive(STL10.url, str(self.root), filename=STL10.filename, md5=STL10.tgz_md5)

    def read(self):
        raws = [np.memmap(self.root / FOLDER / f"{part}_X.bin", dtype=np.uint8, mode="r").reshape(-1, 3, SIDE, SIDE)
                for part in self.parts]
        images, at = torch.empty(sum(map(len, raws)), 3, self.size, self.size), 0
        for raw in raws:
            for start in range(0, len(raw), CHUNK):  # the file's rows are the image's columns: transposed back
                chunk = torch.from_numpy(np.ascontiguousarray(raw[start:start + CHUNK].transpose(0, 1, 3, 2)))
                images[at:at + len(chunk)] = resized(chunk, self.size, self.value_range)
                at += len(chunk)
        labels = [torch.from_numpy(np.fromfile(self.root / FOLDER / f"{part}_y.bin", dtype=np.uint8).astype(np.int64)
                                   - 1) for part in self.parts if part != "unlabeled"]
        return images, (torch.cat(labels) if len(labels) == len(self.parts) else None)
