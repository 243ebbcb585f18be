"""A run's loggers as one (`pl_module.run.logger`): every logger gets the same scalars, images and figures.

The step, the eval callback and the figure callbacks write here and never ask which loggers there are;
each kind keeps things its own way:

- scalars: every logger's `log_metrics`, iterations as the step;
- images and figures: TensorBoard's Images tab; MLflow artifacts `<tag>/<iteration>.png` (a sample grid at
  iteration 200: `samples/fake/0000200.png`); a CSV logger has no images (TensorBoard or MLflow beside it has).
"""
from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger


def artifact(tag: str, step: int) -> str:
    """Where MLflow keeps image `tag` of iteration `step`."""
    return f"{tag}/{step:07d}.png"


class Loggers:
    """The run's Lightning loggers, written to as one."""

    def __init__(self, loggers: list[Logger]):
        self.all = list(loggers)

    @classmethod
    def of(cls, loggers: Any) -> Loggers | None:
        """None for no logger (logger=none), else the loggers (one, a list, or a Loggers) as one."""
        if isinstance(loggers, Loggers):
            return loggers
        found = [lg for lg in (loggers if isinstance(loggers, (list, tuple)) else [loggers]) if lg]
        return cls(found) if found else None

    def of_kind(self, kind: type) -> list:
        return [lg for lg in self.all if isinstance(lg, kind)]

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        for lg in self.all:
            lg.log_metrics(values, step=step)

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """`image`: [C, H, W], values in [0, 1] (make_grid's normalized grid)."""
        for lg in self.of_kind(TensorBoardLogger):
            lg.experiment.add_image(tag, image, step)
        if mlflow := self.of_kind(MLFlowLogger):
            pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            for lg in mlflow:
                lg.experiment.log_image(lg.run_id, pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels,
                                        artifact_file=artifact(tag, step))

    def add_figure(self, tag: str, fig, step: int, close: bool = True) -> None:
        """A matplotlib figure, closed afterwards unless `close=False` (a callback that redraws it)."""
        for lg in self.of_kind(MLFlowLogger):
            lg.experiment.log_figure(lg.run_id, fig, artifact_file=artifact(tag, step))
        for lg in self.of_kind(TensorBoardLogger):
            lg.experiment.add_figure(tag, fig, step, close=False)
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)

    def finalize(self, status: str) -> None:
        for lg in self.all:
            lg.finalize(status)
