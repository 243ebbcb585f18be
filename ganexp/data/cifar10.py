"""CIFAR-10 from torchvision's download (`<root>/cifar-10-batches-py/`), or the binary version
(`<root>/cifar-10-batches-bin/`), as 3×32×32 RGB (resized when data.size is not 32).

The python version is a pickle, and a pickle can run any code while it loads. torchvision reads it with
`pickle.load`; ganexp reads it with an unpickler that can build nothing but the numpy array, dicts, lists,
strings and ints these files hold, from files no larger than a batch, then checks the array's shape, type and
labels. Train: data_batch_1..5 (50,000 images); test: test_batch (10,000).
"""
from __future__ import annotations

import functools
import io
import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import download_and_extract_archive

try:  # numpy >= 2 (the files name numpy.core.multiarray, numpy 1's name for the same module)
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core.multiarray import _reconstruct

from ganexp.data.rgb import TorchvisionFolder, damaged, resized
from ganexp.errors import shown

PY, BIN = "cifar-10-batches-py", "cifar-10-batches-bin"
FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
PER_BATCH = 10_000    # images in each batch file
PIXELS = 3 * 32 * 32  # one image: the red plane, then green, then blue, each row by row
CLASSES = 10
MAX_PICKLE_BYTES = 32 * 2**20  # a batch pickle is 31.0 MB (30.7 MB of pixels, names, labels): no more is read
MAX_ITEMS = PER_BATCH * PIXELS  # the most pixels one batch holds


class _NDArray:
    """What the name numpy.ndarray gives in a CIFAR-10 pickle: only `_array`'s first argument. (numpy's own class
    would let a pickle call it, and np.ndarray(shape, dtype, buffer, offset, strides) views any memory.)"""


def _array(cls, shape, typecode):
    """numpy's `_reconstruct` as a pickle of an array calls it: an empty uint8 array that BUILD then fills."""
    if cls is not _NDArray or tuple(shape) != (0,) or typecode not in ("b", b"b"):
        raise pickle.UnpicklingError(f"it builds an array from {shape!r:.40} {typecode!r:.20}, not as numpy pickles one")
    return _reconstruct(np.ndarray, (0,), b"b")


def _dtype(name, align=False, copy=True):
    if name != "u1":
        raise pickle.UnpicklingError(f"it holds an array of {name!r:.20}, not of uint8 (u1)")
    return np.dtype("u1")


# The only globals a CIFAR-10 pickle names (numpy's array reconstruction), each able to build only what those
# files hold; anything else is refused.
ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _array, ("numpy._core.multiarray", "_reconstruct"): _array,
           ("numpy", "ndarray"): _NDArray, ("numpy", "dtype"): _dtype}


class ArraysOnly(pickle._Unpickler):
    """An unpickler that builds plain containers and uint8 numpy arrays, nothing that could run code, and no
    array larger than a batch: Python's own implementation, whose BUILD step (an array's shape, dtype and bytes)
    is checked before numpy sees it."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED:
            return ALLOWED[module, name]
        raise pickle.UnpicklingError(f"it asks for {shown(module, 60)}.{shown(name, 60)}, which a CIFAR-10 batch never "
                                     "holds (a pickle that would run code?)")

    def load_build(self) -> None:
        state, target = self.stack[-1], self.stack[-2]
        if isinstance(target, np.dtype):  # a dtype's state: no sub-array, no fields (they could size anything)
            ok = isinstance(state, tuple) and len(state) >= 5 and state[2:5] == (None, None, None)
        elif isinstance(target, np.ndarray):  # (version, shape, dtype, fortran, bytes): uint8, its bytes all there
            ok = (isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple) and len(state[1]) <= 2
                  and all(type(n) is int and 0 <= n <= MAX_ITEMS for n in state[1]) and state[2] == np.uint8
                  and isinstance(state[4], (bytes, str)) and len(state[4]) == int(np.prod(state[1], dtype=np.int64))
                  and len(state[4]) <= MAX_ITEMS)
        else:
            ok = False
        if not ok:
            raise pickle.UnpicklingError(f"it sets a {type(target).__name__} to what no CIFAR-10 batch holds")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build


def read_pickle(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 3072] and int64 labels of one python-version batch; ConfigError naming `file` otherwise."""
    size = file.stat().st_size
    if size > MAX_PICKLE_BYTES:
        raise damaged(file, f"is {size} bytes, more than a CIFAR-10 batch ({MAX_PICKLE_BYTES} at most); refused, "
                            "not read", "CIFAR-10")
    with open(file, "rb") as f:
        raw = f.read(MAX_PICKLE_BYTES + 1)
    try:  # untrusted bytes: whatever the unpickler raises means the file is not a batch
        batch = ArraysOnly(io.BytesIO(raw), encoding="latin1").load()  # as torchvision (Python 2 files)
    except EOFError:
        raise damaged(file, "is truncated: its pickle ends before its data does", "CIFAR-10") from None
    except Exception as err:  # noqa: BLE001
        raise damaged(file, f"is not a CIFAR-10 batch: {type(err).__name__}: {shown(str(err), 200)}", "CIFAR-10") from None
    if not isinstance(batch, dict):
        raise damaged(file, f"holds a {type(batch).__name__}, not a CIFAR-10 batch's dict", "CIFAR-10")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        what = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise damaged(file, f"holds data of {what}, not uint8 [N, {PIXELS}]", "CIFAR-10")
    if not isinstance(labels, list) or not all(type(v) is int and abs(v) < 2**31 for v in labels):
        raise damaged(file, "holds no list of integer labels", "CIFAR-10")
    return data, np.asarray(labels, dtype=np.int64)


def read_binary(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """The same from a binary-version batch: records of one label byte and 3072 pixel bytes."""
    records = np.fromfile(file, dtype=np.uint8).reshape(-1, 1 + PIXELS)  # check() made sure the size divides
    return records[:, 1:], records[:, 0].astype(np.int64)


@functools.lru_cache(maxsize=len(FILES["train"]))  # read when checked (before the run folder), kept for setup
def _batch(path: str, binary: bool, size: int, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    file = Path(path)
    data, labels = read_binary(file) if binary else read_pickle(file)
    if len(labels) != len(data) or not 1 <= len(data) <= PER_BATCH:
        raise damaged(file, f"holds {len(data)} images and {len(labels)} labels; a batch holds as many labels as "
                            f"images, at most {PER_BATCH}", "CIFAR-10")
    if not 0 <= labels.min() <= labels.max() < CLASSES:  # the metrics' classifiers index by label
        raise damaged(file, f"holds label {labels.max() if labels.max() >= CLASSES else labels.min()}; labels are "
                            f"0..{CLASSES - 1}", "CIFAR-10")
    return data, labels


def read_batch(file: Path, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """A checked batch: uint8 images [N, 3072] and labels 0..9; ConfigError naming `file` when it is not one."""
    stat = file.stat()
    return _batch(str(file), binary, stat.st_size, stat.st_mtime_ns)


class CIFAR10DataModule(TorchvisionFolder):
    title, url = "CIFAR-10", CIFAR10.url

    @property
    def layout(self) -> str:
        """The python version when its files are all there, else the binary one when its are; else python."""
        def complete(folder: str, suffix: str) -> bool:
            return all((self.root / folder / (name + suffix)).is_file() for name in FILES[self.split])
        return BIN if not complete(PY, "") and complete(BIN, ".bin") else PY

    def required(self) -> list[Path]:
        suffix = ".bin" if self.layout == BIN else ""
        return [self.root / self.layout / (name + suffix) for name in FILES[self.split]]

    def check(self) -> None:
        """Every batch read and checked (about a second for all of them), so that a damaged one is refused before
        any run folder is made."""
        binary = self.layout == BIN
        counts = {}
        for file in self.required():
            self.regular(file)
            size = file.stat().st_size
            if size == 0:
                raise damaged(file, "is empty (0 bytes)", self.title)
            if binary and (size % (1 + PIXELS) or size > PER_BATCH * (1 + PIXELS)):
                raise damaged(file, f"is {size} bytes, not a whole number of {1 + PIXELS}-byte records (at most "
                                    f"{PER_BATCH}): truncated?", self.title)
            counts[file] = len(read_batch(file, binary)[0])
        if len(set(counts.values())) > 1:  # the batches hold PER_BATCH images each: one cut short is truncated
            short = min(counts, key=counts.get)
            raise damaged(short, f"holds {counts[short]} images, the other batches {max(counts.values())}: truncated?",
                          self.title)
        self._count = sum(counts.values())

    def count(self) -> int:
        return self._count

    def fetch(self) -> None:  # the archive only: CIFAR10(download=True) would also pickle.load what it got
        download_and_extract_archive(CIFAR10.url, str(self.root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)

    def read(self):
        parts = [read_batch(file, self.layout == BIN) for file in self.required()]
        images = torch.from_numpy(np.concatenate([data for data, _ in parts]).reshape(-1, 3, 32, 32))
        labels = torch.from_numpy(np.concatenate([labels for _, labels in parts]))
        return resized(images, self.size, self.value_range), labels
