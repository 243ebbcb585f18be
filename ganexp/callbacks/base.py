"""What several callbacks share: "every N iterations and at the end", and small helpers.

Every callback counts iterations (GANModule.iteration), never Lightning's global_step.
"""
from __future__ import annotations

import numpy as np
from pytorch_lightning.callbacks import Callback


class Periodic(Callback):
    """`periodic()` every `every` iterations (0: never during training), and `final()` at the end (by default
    `periodic()` once more unless it ran at that iteration). A diverged or interrupted run ends without
    `final()`, unless `final_when_diverged` / `final_when_interrupted` say otherwise."""

    final_when_diverged = False
    final_when_interrupted = False

    def __init__(self, every: int):
        self.every = int(every)
        self.ran_at: int | None = None  # the iteration periodic() last ran at

    def periodic(self, trainer, pl_module) -> None:
        raise NotImplementedError

    def final(self, trainer, pl_module) -> None:
        if self.ran_at != pl_module.iteration:
            self._run(trainer, pl_module)

    def _run(self, trainer, pl_module) -> None:
        self.ran_at = pl_module.iteration
        self.periodic(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every > 0 and pl_module.iteration % self.every == 0:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if pl_module.diverged_at is not None and not self.final_when_diverged:
            return
        if pl_module.interrupted is not None and not self.final_when_interrupted:
            return
        self.final(trainer, pl_module)


def epochs(trainer, iteration: int) -> float:
    """Epochs completed after `iteration` iterations (fractional)."""
    return iteration / max(int(trainer.num_training_batches), 1)


def pick(iterations: list[int], k: int) -> list[int]:
    """Indices of at most k entries of `iterations` closest to k evenly spaced iterations, first and last kept."""
    if len(iterations) <= k:
        return list(range(len(iterations)))
    its = np.asarray(iterations, dtype=float)
    targets = np.linspace(its[0], its[-1], k)
    return sorted({int(np.abs(its - t).argmin()) for t in targets})


