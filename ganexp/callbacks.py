"""Callbacks that count iterations (GANModule.iteration), never Lightning's global_step."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torchvision.utils import make_grid

from ganexp.module import GANModule

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class PeriodicCheckpoint(Callback):
    """`<dirpath>/last.ckpt` every `every` iterations and at the end, written atomically.

    Lightning's ModelCheckpoint counts global_step (d_steps + 1 per iteration) and
    writes in place; this saves to a temporary file and renames it, so a kill during
    a save never leaves a broken checkpoint.
    """

    def __init__(self, dirpath: str, every: int = 1000):
        self.dirpath, self.every = Path(dirpath), int(every)

    @property
    def last_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def save(self, trainer: pl.Trainer) -> None:
        module: GANModule = trainer.lightning_module
        if module.diverged_at is not None or not module.parameters_finite():
            # Keep the last good checkpoint; stop, and let train.py mark the run diverged.
            module.diverged_at = module.diverged_at if module.diverged_at is not None else module.iteration
            trainer.should_stop = True
            return
        tmp = self.last_path.with_suffix(".ckpt.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # collective under DDP; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.last_path)

    def on_train_batch_end(self, trainer, pl_module: GANModule, outputs, batch, batch_idx) -> None:
        if self.every > 0 and pl_module.iteration % self.every == 0:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module: GANModule) -> None:
        self.save(trainer)


class SampleGrid(Callback):
    """Generator output on the fixed latent batch every `every` iterations and at the end.

    Images: a grid with a fixed value range (so grids do not rescale and flicker),
    plus one grid of real data at the start. Toy 2-D data: a scatter of real vs
    generated points instead.
    """

    def __init__(self, every: int = 500, n_real_points: int = 1000):
        self.every, self.n_real_points = int(every), n_real_points

    def on_train_start(self, trainer, pl_module: GANModule) -> None:
        real = trainer.datamodule.train_data[: len(pl_module.fixed_z)]
        if real.dim() == 4 and trainer.is_global_zero and trainer.logger is not None:
            trainer.logger.experiment.add_image("samples/real", self._grid(real, trainer), pl_module.iteration)

    def on_train_batch_end(self, trainer, pl_module: GANModule, outputs, batch, batch_idx) -> None:
        if self.every > 0 and pl_module.iteration % self.every == 0:
            self.log_samples(trainer, pl_module)

    def on_train_end(self, trainer, pl_module: GANModule) -> None:
        if pl_module.diverged_at is not None:
            return  # NaN weights draw nothing worth seeing
        if self.every <= 0 or pl_module.iteration % self.every != 0:
            self.log_samples(trainer, pl_module)

    def log_samples(self, trainer, pl_module: GANModule) -> None:
        if not trainer.is_global_zero or trainer.logger is None:
            return
        writer, step = trainer.logger.experiment, pl_module.iteration
        real = trainer.datamodule.train_data
        if real.dim() == 4:
            writer.add_image("samples/fake", self._grid(pl_module.sample(pl_module.fixed_z), trainer), step)
        else:  # toy 2-D: a fixed, larger latent sample so the scatter shows the distribution
            z = pl_module.prior.sample(self.n_real_points, generator=torch.Generator().manual_seed(0))
            fake = pl_module.sample(z.to(pl_module.device))
            writer.add_figure("samples/scatter", scatter_figure(real[: self.n_real_points], fake, step), step)

    @staticmethod
    def _grid(images: torch.Tensor, trainer) -> torch.Tensor:
        value_range = trainer.datamodule.value_range or (-1.0, 1.0)
        return make_grid(images.detach().float().cpu(), nrow=8, normalize=True, value_range=value_range)


def scatter_figure(real: torch.Tensor, fake: torch.Tensor, iteration: int):
    fig, ax = plt.subplots(figsize=(5, 5))
    real, fake = real.detach().cpu().numpy(), fake.detach().float().cpu().numpy()
    ax.scatter(real[:, 0], real[:, 1], s=4, alpha=0.5, label="real")
    ax.scatter(fake[:, 0], fake[:, 1], s=4, alpha=0.5, label="generated")
    ax.set_title(f"iteration {iteration}")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig
