"""Every scalar GANModule logs, over epochs: curves.csv, curves.png and TensorBoard figures/curves."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback

from ganexp.callbacks import figures

from ganexp.io import writes
from ganexp.callbacks.base import epochs


class TrainingCurves(Callback):
    """The instance_noise recipe's curves, at the end into `dirpath`: curves.csv (iteration, epoch, one column
    per logged tag) and curves.png (also TensorBoard `figures/curves`); the history is kept in checkpoints."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        logged = pl_module.last_logged  # carries the iteration it was logged at
        if logged and (not self.rows or self.rows[-1]["iteration"] != logged["iteration"]):
            iteration = logged["iteration"]
            self.rows.append({"iteration": iteration, "epoch": epochs(trainer, iteration + 1),
                              **{k: v for k, v in logged.items() if k != "iteration"}})

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.rows:
            return
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        with writes.replacing(self.dirpath / "curves.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        series = {c: [row.get(c, math.nan) for row in self.rows] for c in columns}
        fig = figures.curves_figure(series["epoch"], series)
        figures.save_png(fig, self.dirpath / "curves.png")
        if (writer := pl_module.run.logger) is not None:
            writer.add_figure("figures/curves", fig, pl_module.iteration, close=False)

    def state_dict(self) -> dict:  # one tensor, not a list of dicts: long runs log 10^5 rows
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        values = torch.tensor([[row.get(c, math.nan) for c in columns] for row in self.rows], dtype=torch.float64)
        return {"columns": columns, "values": values}

    def load_state_dict(self, state: dict) -> None:
        columns, values = state.get("columns", []), state.get("values")
        self.rows = [] if values is None else [
            {c: int(v) if c == "iteration" else v for c, v in zip(columns, row) if not math.isnan(v)}
            for row in values.tolist()]
