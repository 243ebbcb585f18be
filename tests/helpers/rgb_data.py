"""Tiny CIFAR-10, STL-10 and CelebA in torchvision's exact on-disk formats, for the tests to read."""
from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

PER_BATCH = 4  # images in each tiny CIFAR batch: 5 train batches make 20 images
# What a run on write_all()'s data needs beside data.root (tests that train every data option)
SMALL = {"cifar10": ["data.size=8"], "stl10": ["data.size=8"], "celeba": ["data.crop=16", "data.size=8"]}


def gradient_image(side: int) -> np.ndarray:
    """uint8 [3, side, side]: red grows along x (column index), green along y, blue constant 200."""
    x = np.arange(side) * (255 // (side - 1))
    red = np.broadcast_to(x, (side, side))
    return np.stack([red, red.T, np.full((side, side), 200)]).astype(np.uint8)


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2's str (BINSTRING), as the real CIFAR-10 files, written by Python 2's cPickle, hold
    them: loaded with encoding="latin1" (as torchvision does), keys come back as str and numpy's raw data as text."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        self.write((pickle.SHORT_BINSTRING + bytes([len(obj)])) if len(obj) < 256 else
                   (pickle.BINSTRING + struct.pack("<i", len(obj))))
        self.write(obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def py2_pickle(obj) -> bytes:
    """`obj` pickled as Python 2 with numpy 1 pickled it: numpy's module under its old name numpy.core."""
    out = io.BytesIO()
    Py2Pickler(out, protocol=2).dump(obj)
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")  # GLOBAL: text lines


def cifar_batch(first: np.ndarray | None, labels: list[int]) -> dict:
    rng = np.random.default_rng(len(labels))
    data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    if first is not None:
        data[0] = first.reshape(-1)  # channel-major: 1024 red bytes (row by row), then green, then blue
    return {b"batch_label": b"training batch 1 of 5", b"labels": labels, b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}


def write_cifar(root: Path, binary: bool = False, per_batch: int = PER_BATCH) -> Path:
    """The 5 train batches and the test batch (and batches.meta) of a CIFAR-10 of 6 x per_batch images in `root`."""
    folder = root / ("cifar-10-batches-bin" if binary else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        batch = cifar_batch(gradient_image(32) if b == 0 else None, [(b + i) % 10 for i in range(per_batch)])
        if binary:
            records = np.concatenate([np.array(batch[b"labels"], np.uint8)[:, None], batch[b"data"]], axis=1)
            (folder / f"{name}.bin").write_bytes(records.tobytes())
        else:
            (folder / name).write_bytes(py2_pickle(batch))
    if not binary:
        (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": [b"airplane"] * 10,
                                                          b"num_cases_per_batch": per_batch, b"num_vis": 3072}))
    return folder


def write_stl(root: Path, counts: dict | None = None) -> Path:
    """stl10_binary/ with tiny train, test and unlabeled splits; image 0 of each is gradient_image(96)."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for part, n in (counts or {"train": 3, "test": 2, "unlabeled": 4}).items():
        images = np.random.default_rng(n).integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        images[0] = gradient_image(96)
        (folder / f"{part}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())  # columns
        if part != "unlabeled":
            (folder / f"{part}_y.bin").write_bytes(bytes((i % 10) + 1 for i in range(n)))  # labels 1..10
    return folder


def write_celeba(root: Path, sizes=((20, 24),) * 4, partitions=(0, 2, 0, 1)):
    """celeba/ with JPEGs whose central 16x16 square is white and the rest black, and their partition list."""
    folder = root / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes, 1):
        image = Image.new("RGB", (w, h))
        image.paste((255, 255, 255), ((w - 16) // 2, (h - 16) // 2, (w + 16) // 2, (h + 16) // 2))
        image.save(folder / f"{i:06d}.jpg", quality=95)
    (root / "celeba" / "list_eval_partition.txt").write_text(
        "".join(f"{i:06d}.jpg {p}\n" for i, p in enumerate(partitions, 1)))
    return folder


def write_all(root: Path) -> Path:
    """All three datasets in one root, 40 train images each (2 batches of 16)."""
    write_cifar(root, per_batch=8)
    write_stl(root, {"train": 12, "test": 2, "unlabeled": 40})
    write_celeba(root, sizes=((20, 24),) * 44, partitions=(0,) * 40 + (1, 2, 1, 2))
    return root
