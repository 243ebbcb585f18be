"""The domain classifier whose feature space every ganexp metric is computed in.

Inception weights need a download and were never meant for 28×28 grey digits, so ganexp trains one small CNN
per labelled dataset on its train split, caches it, and records its SHA-256: two numbers are comparable only
when their classifier hashes match.

    python -m ganexp.metrics.classifier data=mnist     # train (or load) and print its accuracy
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import stat
import sys
import time
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from ganexp.io import writes
from ganexp.errors import ConfigError, shown

# dataset → the test accuracy it must reach, and the training that reaches it in minutes on 2 CPU cores
# (epochs; random shift in pixels: worth the last fraction of a percent on MNIST, harmful on Fashion).
QUALITY_BAR = {"digits": 0.95, "mnist": 0.99, "fashion_mnist": 0.90}
RECIPE = {"digits": {"epochs": 30, "shift": 0}, "mnist": {"epochs": 4, "shift": 2},
          "fashion_mnist": {"epochs": 6, "shift": 0}}
LABELLED = tuple(QUALITY_BAR)
SHAPE = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28)}  # [C, H, W] of each dataset
ARCH = "cnn-16-32-128-v1"  # bump when DomainClassifier changes: old caches are retrained, not misread
# The cache may be shared, so a cached file is data to check: MNIST's classifier is ~0.9 MB, digits' 0.13 MB.
MAX_CACHE_BYTES = 16 << 20
FIELDS = ("dataset", "arch", "recipe", "shape", "state_dict", "sha256", "test_accuracy", "quality_bar",
          "train_seconds", "n_train", "n_test")  # what a record holds; anything else in a file is ignored


class DomainClassifier(nn.Module):
    """Two conv blocks and a 128-unit feature layer; input: images in [0, 1], [N, C, H, W] (H, W % 4 == 0)."""

    num_features = 128  # read by torchmetrics

    def __init__(self, shape: tuple[int, int, int], n_classes: int = 10):
        super().__init__()
        c, h, w = shape
        self.shape = tuple(shape)
        self.body = nn.Sequential(
            nn.Conv2d(c, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * (h // 4) * (w // 4), self.num_features), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(self.num_features, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def embed(self, images: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
        """(features [N, 128], logits [N, 10]) of uint8 images, in eval mode, on the model's device."""
        self.eval()
        device = next(self.parameters()).device
        feats = [self.body(chunk.to(device).float() / 255.0) for chunk in images.split(batch_size)]
        return torch.cat(feats).cpu(), torch.cat([self.head(f) for f in feats]).cpu()


def state_hash(state: dict[str, Tensor]) -> str:
    """SHA-256 of the weights themselves (names, dtypes, shapes, bytes), independent of file format."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def load_split(name: str, train: bool, root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """(uint8 images [N, 1, H, W], int64 labels) of a labelled dataset's train or test split."""
    if name == "digits":
        from ganexp.data.digits import digits_split

        images, labels = digits_split(train)  # the split the GAN trains on (train=True) too
        return (images * 255.0).round().to(torch.uint8), labels
    if name in ("mnist", "fashion_mnist"):
        from ganexp.data.mnist import FashionMNISTDataModule, MNISTDataModule

        cls = MNISTDataModule if name == "mnist" else FashionMNISTDataModule
        return cls(root=root and str(root), batch_size=1).split(train)  # no root: $GANEXP_DATA_DIR, else ./data
    raise ConfigError(f"no domain classifier for data '{name}'; metrics need one of {', '.join(LABELLED)}")


def cache_dir() -> Path:
    """$GANEXP_CACHE_DIR, else $XDG_CACHE_HOME/ganexp, else ~/.cache/ganexp (confined: no link below it is
    written through)."""
    if os.environ.get("GANEXP_CACHE_DIR"):
        return writes.confine(Path(os.environ["GANEXP_CACHE_DIR"]).expanduser())
    return writes.confine(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "ganexp")


def _unwritable(path: Path, problem: str, err: OSError) -> ConfigError:
    return ConfigError(f"the classifier cache {path.parent} cannot be written ({err.strerror or err}) and its "
                       f"{path.name} {problem}; set GANEXP_CACHE_DIR=<writable folder>")


def train_classifier(name: str, root=None, seed: int = 0, log=print) -> dict:
    """Train on the train split, measure on the test split; returns the record that gets cached."""
    x, y = load_split(name, train=True, root=root)
    x_test, y_test = load_split(name, train=False, root=root)  # SHAPE[name]-shaped: check_idx checked MNIST's files
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DomainClassifier(tuple(x.shape[1:]))
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        epochs, shift, batch = RECIPE[name]["epochs"], RECIPE[name]["shift"], 128
        steps = epochs * ((len(x) + batch - 1) // batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
        start = time.perf_counter()
        for epoch in range(epochs):
            model.train()
            for idx in torch.randperm(len(x)).split(batch):
                images = x[idx].float() / 255.0
                if shift:  # the whole batch rolled by up to `shift` pixels (MNIST's borders are empty)
                    dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,)))
                    images = torch.roll(images, shifts=(dy, dx), dims=(2, 3))
                loss = nn.functional.cross_entropy(model(images), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            log(f"classifier[{name}] epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    acc = float((model.embed(x_test)[1].argmax(1) == y_test).float().mean())
    record = {
        "dataset": name, "arch": ARCH, "recipe": RECIPE[name], "shape": list(x.shape[1:]), "state_dict": state,
        "sha256": state_hash(state), "test_accuracy": acc, "quality_bar": QUALITY_BAR[name],
        "train_seconds": time.perf_counter() - start, "n_train": len(x), "n_test": len(x_test),
    }
    verdict = "meets" if acc >= QUALITY_BAR[name] else "DOES NOT MEET"
    log(f"classifier[{name}]: test accuracy {acc:.2%} ({verdict} the bar of {QUALITY_BAR[name]:.0%}), "
        f"{record['train_seconds']:.0f} s, sha256 {record['sha256'][:12]}")
    return record


def load_classifier(name: str, root=None, log=print,
                    unusable: tuple[str, str] | None = None) -> tuple[DomainClassifier, dict]:
    """The cached classifier for `name`, every field checked; trained into a fresh file when there is none or
    the cached one fails a check. A valid file is used as it is (a read-only cache is fine); training takes
    the cache's lock. `unusable`: (sha256, why) of a classifier the caller found wrong, treated as failing."""
    path = cache_dir() / f"classifier-{name}.pt"
    record, problem = _cached(path, name, unusable)
    if problem:  # one process trains it, under the cache's lock; parallel sweep jobs wait and load the result
        try:
            fd = writes.open_fd(path.with_suffix(".lock"), os.O_RDWR)
        except OSError as err:
            raise _unwritable(path, problem, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            record, problem = _cached(path, name, unusable)  # another job may have trained it while we waited
            if problem:
                log(f"classifier[{name}]: {path} {problem}; training a fresh one")
                record = train_classifier(name, root=root, log=log)
                try:
                    writes.replace_with(path, lambda tmp: torch.save(record, tmp))
                except OSError as err:
                    raise _unwritable(path, problem, err) from None
        finally:
            os.close(fd)  # releases the lock
    model = DomainClassifier(SHAPE[name])
    model.load_state_dict(record["state_dict"])
    info = {k: record[k] for k in FIELDS if k != "state_dict"}
    info["path"] = str(path)
    return model.eval(), info


def _cached(path: Path, name: str, unusable: tuple[str, str] | None = None) -> tuple[dict | None, str | None]:
    """(record, None) for a cached file that passes every check, else (None, what is wrong with it)."""
    data, problem = read_bounded(path, MAX_CACHE_BYTES, "a classifier")
    record, problem = (None, problem) if problem else load_torch(data, MAX_CACHE_BYTES, "a classifier")
    problem = problem or _check_record(record, name)
    if problem is None and unusable and record["sha256"] == unusable[0]:
        problem = unusable[1]
    return (None, problem) if problem else (record, None)


def read_bounded(path: Path, max_bytes: int, what: str) -> tuple[bytes | None, str | None]:
    """(the bytes of a regular file of at most max_bytes, None), else (None, what is wrong with it)."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:  # a FIFO in its place must not hang us
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None, "is not a regular file"
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        return None, "does not exist"
    except OSError as err:
        return None, f"cannot be read ({err.strerror or err})"
    if len(data) > max_bytes:
        return None, f"is over {max_bytes >> 20} MiB, too large for {what}"
    return data, None


def load_torch(data: bytes, max_bytes: int, what: str):
    """(torch.load(data, weights_only=True), None), else (None, what is wrong with it)."""
    try:  # torch.save writes an uncompressed zip; a compressed member could unpack to any size
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
        if unpacked > max_bytes:
            return None, f"unpacks to over {max_bytes >> 20} MiB, too large for {what}"
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), None
    except Exception as err:  # noqa: BLE001 - whatever a damaged file raises, it is refused
        return None, f"cannot be read as a torch file ({type(err).__name__})"


def _same(value, expected) -> bool:
    """Equal as JSON (types included: 1 is not 1.0 or True), never comparing a tensor."""
    try:
        return json.dumps(value, sort_keys=True) == json.dumps(expected, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return False


def _number(value, low: float, high: float = math.inf, integer: bool = False) -> bool:
    kinds = (int,) if integer else (int, float)  # (an int is compared exactly: math.isfinite would overflow)
    return (isinstance(value, kinds) and not isinstance(value, bool) and low <= value <= high
            and (isinstance(value, int) or math.isfinite(value)))


def _check_record(record, name: str) -> str | None:
    """What is wrong with a cached record for `name`, or None: fields, weights (keys, shapes, dtypes,
    finite) against the model, and the hash."""
    if not isinstance(record, dict) or any(k not in record for k in FIELDS):
        return "is not a ganexp classifier record"
    expected = {"dataset": name, "arch": ARCH, "recipe": RECIPE[name], "shape": list(SHAPE[name]),
                "quality_bar": QUALITY_BAR[name]}
    for key, want in expected.items():
        if not _same(record[key], want):
            return f"has {key} {shown(repr(record[key]))}, not {want!r}"
    if not (isinstance(record["sha256"], str) and len(record["sha256"]) == 64
            and all(c in "0123456789abcdef" for c in record["sha256"])):
        return "has no valid sha256"
    numbers = {"test_accuracy": _number(record["test_accuracy"], 0.0, 1.0),
               "train_seconds": _number(record["train_seconds"], 0.0),
               "n_train": _number(record["n_train"], 1, integer=True),
               "n_test": _number(record["n_test"], 1, integer=True)}
    if bad := [key for key, ok in numbers.items() if not ok]:
        return f"has a bad {bad[0]} ({shown(repr(record[bad[0]]))})"
    state = record["state_dict"]
    with torch.device("meta"):  # the model's keys, shapes and dtypes, no memory
        own = DomainClassifier(SHAPE[name]).state_dict()
    if not isinstance(state, dict) or set(state) != set(own):
        return "holds weights of another model (its state_dict keys differ)"
    for key, ref in own.items():
        t = state[key]
        if not isinstance(t, Tensor) or t.layout != torch.strided or t.dtype != ref.dtype or t.shape != ref.shape:
            found = f"{t.dtype} {list(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
            return f"holds {key} as {found}, not {ref.dtype} {list(ref.shape)}"
        if t.is_floating_point() and not torch.isfinite(t).all():
            return f"holds non-finite weights ({key})"
    if state_hash(state) != record["sha256"]:
        return "does not match its recorded sha256"
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    names = [a.split("=", 1)[1] for a in args if a.startswith("data=")] + [a for a in args if "=" not in a]
    if len(names) != 1 or names[0] not in LABELLED:
        print(f"usage: python -m ganexp.metrics.classifier data={{{','.join(LABELLED)}}}", file=sys.stderr)
        return 2
    try:
        _, info = load_classifier(names[0])
    except ConfigError as err:
        print(f"ganexp.metrics.classifier: error: {err}", file=sys.stderr)
        return 2
    print(f"{info['dataset']}: test accuracy {info['test_accuracy']:.2%} (bar {info['quality_bar']:.0%}), "
          f"sha256 {info['sha256']}, {info['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
