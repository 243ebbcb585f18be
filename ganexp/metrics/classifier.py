"""The domain classifier whose feature space every ganexp metric is computed in.

Inception weights come from a download (none offline) and were never meant for 28×28
grey digits, so ganexp trains one small CNN per labelled dataset itself, on the
train split, caches it, and records its SHA-256: two numbers are comparable only when
their classifier hashes match.

    python -m ganexp.metrics.classifier data=mnist     # train (or load) and print its accuracy
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ganexp.errors import ConfigError

# dataset → the test accuracy it must reach, and the training that reaches it in minutes on 2 CPU cores
# (epochs; random shift in pixels: worth the last fraction of a percent on MNIST, harmful on Fashion).
QUALITY_BAR = {"digits": 0.95, "mnist": 0.99, "fashion_mnist": 0.90}
RECIPE = {"digits": {"epochs": 30, "shift": 0}, "mnist": {"epochs": 4, "shift": 2},
          "fashion_mnist": {"epochs": 6, "shift": 0}}
LABELLED = tuple(QUALITY_BAR)
ARCH = "cnn-16-32-128-v1"  # bump when DomainClassifier changes: old caches are retrained, not misread


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

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def embed(self, images: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
        """(features [N, 128], logits [N, 10]) of uint8 images, in eval mode, on the model's device."""
        self.eval()
        device = next(self.parameters()).device
        feats, logits = [], []
        for chunk in images.split(batch_size):
            f = self.body(chunk.to(device).float() / 255.0)
            feats.append(f)
            logits.append(self.head(f))
        return torch.cat(feats).cpu(), torch.cat(logits).cpu()


def state_hash(state: dict[str, Tensor]) -> str:
    """SHA-256 of the weights themselves (names, dtypes, shapes, bytes), independent of file format."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def load_split(name: str, train: bool, root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """(uint8 images [N, 1, H, W], int64 labels) of a labelled dataset's train or test split.

    digits has no official split: ganexp.data.digits.digits_split is the one both sides use.
    """
    if name == "digits":
        from ganexp.data.digits import digits_split

        images, labels = digits_split(train)  # the split the GAN trains on (train=True) too
        return (images * 255.0).round().to(torch.uint8), labels
    if name in ("mnist", "fashion_mnist"):
        from ganexp.data.mnist import FashionMNISTDataModule, MNISTDataModule

        cls = MNISTDataModule if name == "mnist" else FashionMNISTDataModule
        root = root or os.environ.get("GANEXP_DATA_DIR", "./data")
        module = cls(root=str(root), batch_size=1)
        module.ensure_files()
        ds = module.dataset_cls(str(module.root), train=train, download=False)
        return ds.data.unsqueeze(1).clone(), ds.targets.clone()
    raise ConfigError(f"no domain classifier for data '{name}'; metrics need one of {', '.join(LABELLED)}")


def cache_dir() -> Path:
    """$GANEXP_CACHE_DIR, else $XDG_CACHE_HOME/ganexp, else ~/.cache/ganexp."""
    if os.environ.get("GANEXP_CACHE_DIR"):
        return Path(os.environ["GANEXP_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "ganexp"


@contextmanager
def _locked(path: Path):
    """One process trains a classifier; parallel sweep jobs wait for it and load the result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def accuracy(model: DomainClassifier, images: Tensor, labels: Tensor) -> float:
    _, logits = model.embed(images)
    return float((logits.argmax(1) == labels).float().mean())


def train_classifier(name: str, root=None, seed: int = 0, log=print) -> dict:
    """Train on the train split, measure on the test split; returns the record that gets cached."""
    x, y = load_split(name, train=True, root=root)
    x_test, y_test = load_split(name, train=False, root=root)
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
                images = _augment(x[idx].float() / 255.0, shift)
                loss = nn.functional.cross_entropy(model(images), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            log(f"classifier[{name}] epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    acc = accuracy(model, x_test, y_test)
    record = {
        "dataset": name, "arch": ARCH, "recipe": RECIPE[name], "shape": list(x.shape[1:]), "state_dict": state,
        "sha256": state_hash(state), "test_accuracy": acc, "quality_bar": QUALITY_BAR[name],
        "train_seconds": time.perf_counter() - start, "n_train": len(x), "n_test": len(x_test),
    }
    verdict = "meets" if acc >= QUALITY_BAR[name] else "DOES NOT MEET"
    log(f"classifier[{name}]: test accuracy {acc:.2%} ({verdict} the bar of {QUALITY_BAR[name]:.0%}), "
        f"{record['train_seconds']:.0f} s, sha256 {record['sha256'][:12]}")
    return record


def _augment(images: Tensor, shift: int) -> Tensor:
    """The whole batch shifted by up to `shift` pixels (MNIST's borders are empty: rolling is shifting)."""
    if not shift:
        return images
    dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,)))
    return torch.roll(images, shifts=(dy, dx), dims=(2, 3))


def load_classifier(name: str, root=None, log=print) -> tuple[DomainClassifier, dict]:
    """The cached classifier for `name` (trained on first use), checked against its recorded hash."""
    path = cache_dir() / f"classifier-{name}.pt"
    with _locked(path):
        record = _read(path) if path.is_file() else None
        if record is None or record.get("arch") != ARCH or record.get("recipe") != RECIPE[name]:
            record = train_classifier(name, root=root, log=log)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(record, tmp)
            os.replace(tmp, path)
    model = DomainClassifier(tuple(record["shape"]))
    model.load_state_dict(record["state_dict"])
    info = {k: v for k, v in record.items() if k != "state_dict"}
    info["path"] = str(path)
    return model.eval(), info


def _read(path: Path) -> dict:
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable cache file means the same thing
        raise ConfigError(f"cannot read the cached classifier {path} ({type(err).__name__}); delete it to retrain")
    if not isinstance(record, dict) or not isinstance(record.get("state_dict"), dict) or "sha256" not in record:
        raise ConfigError(f"the cached classifier {path} is not a ganexp classifier record; delete it to retrain")
    if state_hash(record["state_dict"]) != record["sha256"]:
        raise ConfigError(f"the cached classifier {path} does not match its recorded sha256; delete it to retrain")
    return record


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
