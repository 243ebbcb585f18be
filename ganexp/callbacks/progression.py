"""G on the fixed latent batch, one row per epoch: progression.png and TensorBoard figures/progression."""
from __future__ import annotations

from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback

from ganexp.callbacks import figures
from ganexp.callbacks.base import epochs, pick
from ganexp.data.base import quantize


class ImageProgression(Callback):
    """The instance_noise recipe's progression strip: G on the first `n_cols` fixed latent vectors at the start,
    after every epoch and at the end; at most `max_rows` evenly spaced rows go into progression.png (and
    TensorBoard `figures/progression`). Image data only."""

    def __init__(self, dirpath: str, n_cols: int = 8, max_rows: int = 20):
        self.dirpath, self.n_cols, self.max_rows = Path(dirpath), int(n_cols), int(max_rows)
        self.rows: list[torch.Tensor] = []
        self.iterations: list[int] = []

    @staticmethod
    def _images(pl_module) -> bool:
        return len(pl_module.run.data.shape) == 3

    def _add(self, trainer, pl_module) -> None:
        images = pl_module.sample(pl_module.fixed_z[: self.n_cols])
        self.rows.append(quantize(images, pl_module.run.data.value_range).cpu())
        self.iterations.append(pl_module.iteration)
        if len(self.rows) > 4 * self.max_rows:
            keep = pick(self.iterations, 2 * self.max_rows)
            self.rows, self.iterations = [self.rows[i] for i in keep], [self.iterations[i] for i in keep]

    def on_train_start(self, trainer, pl_module) -> None:
        if self._images(pl_module) and not self.rows:  # a resumed run already has its rows
            self._add(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._images(pl_module) and (not self.iterations or self.iterations[-1] != pl_module.iteration):
            self._add(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self._images(pl_module):
            return
        if not self.iterations or self.iterations[-1] != pl_module.iteration:
            self._add(trainer, pl_module)  # a run stopped mid-epoch (max_time, divergence)
        if not trainer.is_global_zero:
            return
        keep = pick(self.iterations, self.max_rows)
        labels = [f"epoch {epochs(trainer, self.iterations[i]):.4g}" for i in keep]  # 0.5, 12, 1900
        fig = figures.progression_figure([self.rows[i].numpy() for i in keep], labels)
        figures.save_png(fig, self.dirpath / "progression.png")
        if (writer := pl_module.run.logger) is not None:
            writer.add_figure("figures/progression", fig, pl_module.iteration, close=False)

    def state_dict(self) -> dict:
        return {"rows": torch.stack(self.rows) if self.rows else torch.empty(0, dtype=torch.uint8),
                "iterations": self.iterations}

    def load_state_dict(self, state: dict) -> None:
        self.rows, self.iterations = list(state.get("rows", [])), list(state.get("iterations", []))
