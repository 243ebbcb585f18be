"""`checkpoints/last.ckpt` every `every` iterations and at the end, written whole (ganexp/io/writes.py)."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from ganexp.io import writes
from ganexp.callbacks.base import Periodic


class PeriodicCheckpoint(Periodic):
    """Unlike Lightning's ModelCheckpoint, counts iterations and writes whole (a kill during a save never
    leaves a broken checkpoint); runs after every other callback, so last.ckpt holds what they did."""

    final_when_diverged = True  # save() itself keeps the last good checkpoint
    final_when_interrupted = True

    def __init__(self, dirpath: str, every: int = 1000):
        super().__init__(every)
        self.dirpath = Path(dirpath)
        self.last_path = self.dirpath / "last.ckpt"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return  # the epoch's last batch: saved at its end (on_train_epoch_end), which Lightning resumes right
        self._due(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Lightning restores a checkpoint written after an epoch's last batch but before the epoch ended as if
        # the next epoch had begun, and a later mid-epoch checkpoint of the resumed run as if that epoch were over:
        # its resume ran whole epochs past the data's position (seen as a SLURM job ending 42 iterations late).
        self._due(trainer, pl_module)

    def _due(self, trainer, pl_module) -> None:
        """Save every `every` iterations and when a signal asked to stop, once an iteration (a stop saved
        mid-epoch is not saved again at its epoch's end, after Lightning counted the epoch)."""
        periodic = self.every > 0 and pl_module.iteration % self.every == 0
        if (periodic or pl_module.interrupted is not None) and self.ran_at != pl_module.iteration:
            self._run(trainer, pl_module)
        if pl_module.interrupted is not None and pl_module.stack is None:
            trainer.should_stop = True  # saved mid-epoch: stop now (a stack stops once no member runs)

    def final(self, trainer: pl.Trainer, pl_module) -> None:
        if pl_module.interrupted is not None and self.ran_at == pl_module.iteration:
            return  # saved mid-epoch when the signal came; a save after Lightning stopped would skip the epoch's rest
        self.save(trainer, pl_module)

    def save(self, trainer: pl.Trainer, module) -> None:
        if module.diverged_at is not None or not module.check_parameters():
            return  # keep the last good checkpoint; the module has stopped the run and says why
        if not trainer.is_global_zero:  # collective under DDP: every rank calls it, rank 0 alone writes
            module.run.save_checkpoint(self.last_path, weights_only=False)
            return
        with writes.replacing(self.last_path) as tmp:
            module.run.save_checkpoint(tmp, weights_only=False)

    periodic = save
