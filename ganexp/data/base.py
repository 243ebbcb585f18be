"""The one mechanism every datamodule shares.

Small datasets (MNIST is 188 MB as float32) are kept as one tensor on the training device and indexed by a
shuffled batch of indices each iteration: no per-item transforms, collate or workers. The order is a pure
function of (seed, epoch, rank), so a resumed run sees the same batches.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ganexp.errors import ConfigError


class EpochBatchSampler(Sampler[Tensor]):
    """Yields index tensors of `batch_size`, reshuffled per epoch, sharded by rank for DDP; a last partial batch is
    dropped."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches already trained on)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at every epoch start
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.world_size // self.batch_size

    def __iter__(self) -> Iterator[Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)[self.rank::self.world_size][: self.n // self.world_size]
        skip = self.resume_at[1] if self.resume_at and self.resume_at[0] == self.epoch else 0
        self.resume_at = None
        for start in range(skip * self.batch_size, len(self) * self.batch_size, self.batch_size):
            yield order[start:start + self.batch_size]


class IndexedTensor(Dataset):
    """The rows `index` of one tensor, on its device (a whole batch an item: no collate)."""

    def __init__(self, data: Tensor):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: Tensor) -> Tensor:
        return self.data[index.to(self.data.device, non_blocking=True)]


def quantize(images: Tensor, value_range) -> Tensor:
    """Generator output in `value_range` → uint8 [N, C, H, W], as real images are stored."""
    lo, hi = value_range or (-1.0, 1.0)
    return ((images.float().clamp(lo, hi) - lo) / (hi - lo) * 255).round().to(torch.uint8)


def scale_unit(x: Tensor, value_range: Sequence[float] | None) -> Tensor:
    """Map images in [0, 1] to `value_range` ([-1, 1] for tanh generators, [0, 1] for sigmoid)."""
    if value_range is None:
        return x
    lo, hi = map(float, value_range)
    return x * (hi - lo) + lo


class TensorDataModule(pl.LightningDataModule):
    """Subclasses implement `load()` → (train tensor as float32, labels or None)."""

    metrics_name: str | None = None  # which ganexp.metrics evaluator scores samples of this data

    def __init__(self, batch_size: int, seed: int = 0, shape: Sequence[int] = (), value_range=(-1, 1)):
        super().__init__()  # batch_size >= 1 is train.yaml's rule, checked in ganexp/run/validate.py
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.shape = tuple(int(s) for s in shape)
        self.value_range = None if value_range is None else tuple(float(v) for v in value_range)
        self.train_data: Tensor | None = None
        self.labels: Tensor | None = None
        self._resume_at: tuple[int, int] | None = None

    def load(self) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        data, labels = self.load()
        if self.shape and tuple(data.shape[1:]) != self.shape:
            raise ConfigError(f"data.shape={list(self.shape)} but the data is {list(data.shape[1:])}; fix data.shape")
        if len(data) < self.batch_size:
            raise ConfigError(f"batch_size={self.batch_size} is larger than the dataset ({len(data)} items)")
        self.check_range(data)
        self.train_data, self.labels = data.float().contiguous(), labels

    def check_range(self, data: Tensor, tolerance: float = 1e-4) -> None:
        """Refuse images [N, C, H, W] outside `value_range` (checked once, on the whole set): the generator's
        last activation cannot reach them, and D would tell real from fake by range alone."""
        if self.value_range is None or data.dim() != 4 or data.numel() == 0:
            return
        lo, hi = self.value_range
        low, high = data.min().item(), data.max().item()
        if not (lo - tolerance <= low and high <= hi + tolerance):  # written so that NaN fails too
            raise ConfigError(f"{type(self).__name__} gives data in [{low:.4g}, {high:.4g}] but data.value_range="
                              f"[{lo:g}, {hi:g}]; the images were probably scaled wrongly (e.g. 16-bit pixels / 255)")

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer else torch.device("cpu")
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = EpochBatchSampler(len(self.train_data), self.batch_size, self.seed, rank, world)
        sampler.resume_at, self._resume_at = self._resume_at, None
        # Its own generator: the loader must not draw from the global RNG (resumed runs replay it).
        return DataLoader(IndexedTensor(self.train_data.to(device)), sampler=sampler, batch_size=None,
                          generator=torch.Generator())

    # Saved in checkpoints by Lightning: where in which epoch the run stopped, so that a
    # run resumed mid-epoch trains on the rest of that epoch's batches, in the same order.
    def state_dict(self) -> dict:
        trainer = self.trainer
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:  # saved after a whole epoch: the next starts afresh
            return {}
        return {"epoch": trainer.current_epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume_at = (int(state["epoch"]), int(state["batches_done"]))
