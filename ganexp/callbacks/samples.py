"""Generator output on the fixed latent batch every `every` iterations and at the end."""
from __future__ import annotations

import math

import torch
from torchvision.utils import make_grid

from ganexp.callbacks import figures
from ganexp.callbacks.base import Periodic


class SampleGrid(Periodic):
    """Images: a grid with a fixed value range (so grids do not rescale and flicker), plus one grid
    of real data at the start. Toy 2-D data: a scatter of real vs generated points instead."""

    def __init__(self, every: int = 500, n_real_points: int = 1000):
        super().__init__(every)
        self.n_real_points = int(n_real_points)
        self.scatter: figures.ScatterSnapshots | None = None  # toy data: drawn once, redrawn per snapshot

    def on_train_start(self, trainer, pl_module) -> None:
        real = pl_module.run.data.train_data[: len(pl_module.fixed_z)]
        if real.dim() == 4 and trainer.is_global_zero and pl_module.run.logger is not None:
            pl_module.run.logger.add_image("samples/real", self._grid(real, pl_module), pl_module.iteration)

    def periodic(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or pl_module.run.logger is None:
            return
        writer, step = pl_module.run.logger, pl_module.iteration
        real = pl_module.run.data.train_data
        if real.dim() == 4:
            writer.add_image("samples/fake", self._grid(pl_module.sample(pl_module.fixed_z), pl_module), step)
        else:  # toy 2-D: a fixed, larger latent sample so the scatter shows the distribution
            z = pl_module.prior.sample(self.n_real_points, generator=torch.Generator().manual_seed(0))
            fake = pl_module.sample(z.to(pl_module.device))
            if self.scatter is None:
                self.scatter = figures.ScatterSnapshots(real[: self.n_real_points].cpu().numpy())
            writer.add_image("samples/scatter", self.scatter.image(f"iteration {step}", fake.float().cpu().numpy()), step)

    @staticmethod
    def _grid(images: torch.Tensor, pl_module) -> torch.Tensor:
        value_range = pl_module.run.data.value_range or (-1.0, 1.0)
        nrow = math.ceil(math.sqrt(len(images)))  # square grids: 64 → 8x8, 16 → 4x4
        return make_grid(images.detach().float().cpu(), nrow=nrow, normalize=True, value_range=value_range)
