"""Callbacks that count iterations (GANModule.iteration), never Lightning's global_step.

PeriodicCheckpoint and SampleGrid run in every experiment (callbacks=default). The figure
callbacks (callbacks=figures for images, callbacks=toy for 2-d points) draw with the pure
functions of ganexp/figures.py and write PNG files into the run folder at the end of training,
plus the same figures to TensorBoard under `figures/`.
"""
from __future__ import annotations

import copy
import csv
import math
import os
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torchvision.utils import make_grid

from ganexp import figures
from ganexp.errors import ConfigError
from ganexp.metrics.scores import quadratic_residual
from ganexp.module import GANModule


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
            real, fake = real[: self.n_real_points].cpu().numpy(), fake.float().cpu().numpy()
            writer.add_figure("samples/scatter", figures.scatter_panels_figure(real, [(f"iteration {step}", fake)]), step)

    @staticmethod
    def _grid(images: torch.Tensor, trainer) -> torch.Tensor:
        value_range = trainer.datamodule.value_range or (-1.0, 1.0)
        nrow = math.ceil(math.sqrt(len(images)))  # square grids: 64 → 8x8, seed 001's 16 → 4x4
        return make_grid(images.detach().float().cpu(), nrow=nrow, normalize=True, value_range=value_range)


def _writer(trainer):
    """The TensorBoard SummaryWriter, or None (logger=none or another logger)."""
    experiment = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
    return experiment if hasattr(experiment, "add_figure") else None


def _epochs(trainer, iteration: int) -> float:
    """Epochs completed after `iteration` iterations (fractional)."""
    return iteration / max(int(trainer.num_training_batches), 1)


def _pick(iterations: list[int], k: int) -> list[int]:
    """Indices of at most k entries of `iterations` closest to k evenly spaced iterations, first and last kept."""
    if len(iterations) <= k:
        return list(range(len(iterations)))
    its = np.asarray(iterations, dtype=float)
    targets = np.linspace(its[0], its[-1], k)
    return sorted({int(np.abs(its - t).argmin()) for t in targets})


class TrainingCurves(Callback):
    """Seed 000's curves: every scalar GANModule logs (every `log_every` iterations), over epochs.

    At the end, into `dirpath`: `curves.csv` (iteration, epoch, one column per logged tag) and
    `curves.png` (losses; D accuracy on real, fake and both; G and D gradient norms on a log
    scale), also as TensorBoard figure `figures/curves`. The history is kept in checkpoints, so
    a resumed run draws all of it.
    """

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module: GANModule, outputs, batch, batch_idx) -> None:
        iteration = pl_module.iteration - 1  # GANModule logs an iteration, then counts it as done
        if iteration % pl_module.log_every == 0 and pl_module.last_logged:
            self.rows.append({"iteration": iteration, "epoch": _epochs(trainer, iteration + 1), **pl_module.last_logged})

    def on_train_end(self, trainer, pl_module: GANModule) -> None:
        if not trainer.is_global_zero or not self.rows:
            return
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        self.dirpath.mkdir(parents=True, exist_ok=True)
        with open(self.dirpath / "curves.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        series = {c: [row.get(c, math.nan) for row in self.rows] for c in columns}
        fig = figures.curves_figure(series["epoch"], series)
        figures.save_png(fig, self.dirpath / "curves.png")
        if (writer := _writer(trainer)) is not None:
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


class ImageProgression(Callback):
    """Seed 000's progression strip: G on the first `n_cols` fixed latent vectors, one row per epoch.

    Rows at the start (the untrained generator), after every epoch and at the end; at most
    `max_rows` evenly spaced ones are drawn into `progression.png` (and TensorBoard
    `figures/progression`). Rows are kept as uint8 in checkpoints, thinned past 4 x max_rows.
    Image data only; 2-d toy data draws nothing here (callbacks=toy has its scatter).
    """

    def __init__(self, dirpath: str, n_cols: int = 8, max_rows: int = 20):
        self.dirpath, self.n_cols, self.max_rows = Path(dirpath), int(n_cols), int(max_rows)
        self.rows: list[torch.Tensor] = []
        self.iterations: list[int] = []

    @staticmethod
    def _images(trainer) -> bool:
        return len(trainer.datamodule.shape) == 3

    def _add(self, trainer, pl_module: GANModule) -> None:
        lo, hi = trainer.datamodule.value_range or (-1.0, 1.0)
        images = pl_module.sample(pl_module.fixed_z[: self.n_cols]).float()
        self.rows.append(((images - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8).cpu())
        self.iterations.append(pl_module.iteration)
        if len(self.rows) > 4 * self.max_rows:
            keep = _pick(self.iterations, 2 * self.max_rows)
            self.rows, self.iterations = [self.rows[i] for i in keep], [self.iterations[i] for i in keep]

    def on_train_start(self, trainer, pl_module: GANModule) -> None:
        if self._images(trainer) and not self.rows:  # a resumed run already has its rows
            self._add(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module: GANModule) -> None:
        if self._images(trainer) and (not self.iterations or self.iterations[-1] != pl_module.iteration):
            self._add(trainer, pl_module)

    def on_train_end(self, trainer, pl_module: GANModule) -> None:
        if not self._images(trainer):
            return
        if not self.iterations or self.iterations[-1] != pl_module.iteration:
            self._add(trainer, pl_module)  # a run stopped mid-epoch (max_time, divergence)
        if not trainer.is_global_zero:
            return
        keep = _pick(self.iterations, self.max_rows)
        labels = [f"epoch {_epochs(trainer, self.iterations[i]):.4g}" for i in keep]  # 0.5, 12, 1900
        fig = figures.progression_figure([self.rows[i].numpy() for i in keep], labels)
        figures.save_png(fig, self.dirpath / "progression.png")
        if (writer := _writer(trainer)) is not None:
            writer.add_figure("figures/progression", fig, pl_module.iteration, close=False)

    def state_dict(self) -> dict:
        return {"rows": torch.stack(self.rows) if self.rows else torch.empty(0, dtype=torch.uint8),
                "iterations": self.iterations}

    def load_state_dict(self, state: dict) -> None:
        self.rows, self.iterations = list(state.get("rows", [])), list(state.get("iterations", []))


def feature_layer_problem(discriminator: torch.nn.Module, in_shape) -> str | None:
    """Why `discriminator` cannot be drawn in a 2-d feature space, or None when it can."""
    features = getattr(discriminator, "features", None)
    if features is None:
        return f"{type(discriminator).__name__} has no features(x) layer"
    param = next(discriminator.parameters(), None)
    with torch.no_grad():
        out = features(torch.zeros(2, *in_shape, device=param.device if param is not None else "cpu"))
    if out.dim() != 2 or out.shape[1] != 2:
        return f"{type(discriminator).__name__}'s feature layer is {'x'.join(map(str, out.shape[1:]))}-d"
    return None


class ToyFigures(Callback):
    """Seed 002's figures for 2-d data (data=toy), every `every` iterations and at the end.

    Each snapshot draws the generator on `n_points` fixed latent vectors and logs to TensorBoard
    `figures/decision_surface` (σ(D(x)) as a heatmap under real and generated points, in data
    units) and `figures/feature_space` (D's 2-d feature layer for real points and for the same
    generated points before and after one generator update, with the centroids; the update is
    done on a copy of G and its optimizer state, so training is untouched). The numbers (swd,
    modes, the quadratic's residual) are the eval callback's `metrics/*`.

    At the end, into `dirpath`: `scatter.png` and `feature_space.png` (up to `max_panels`
    snapshots over training) and `decision_surface.png` (the last one). A discriminator without
    a 2-d feature layer is refused at the start with one line (or set feature_space=false).
    """

    def __init__(self, dirpath: str, every: int = 1000, n_points: int = 1000, grid: int = 120,
                 max_panels: int = 4, feature_space: bool = True):
        self.dirpath, self.every, self.n_points = Path(dirpath), int(every), int(n_points)
        self.grid, self.max_panels, self.feature_space = int(grid), int(max_panels), bool(feature_space)
        self.snapshots: list[dict] = []

    def setup(self, trainer, pl_module: GANModule, stage: str) -> None:
        shape = tuple(trainer.datamodule.shape)
        if shape != (2,):
            raise ConfigError(f"callbacks=toy draws 2-d points, but the data is {list(shape)}-shaped; "
                              "use data=toy, or callbacks=figures for images")
        if self.feature_space and (problem := feature_layer_problem(pl_module.discriminator, shape)):
            raise ConfigError(f"callbacks=toy draws D's 2-d feature space, but {problem}; use model=toy_mlp "
                              "(D hidden [16, 16, 2]) or set callbacks.toy.feature_space=false")

    def on_train_batch_end(self, trainer, pl_module: GANModule, outputs, batch, batch_idx) -> None:
        if self.every > 0 and pl_module.iteration % self.every == 0:
            self.snapshot(trainer, pl_module)

    def on_train_end(self, trainer, pl_module: GANModule) -> None:
        if pl_module.diverged_at is not None:
            return  # NaN weights draw nothing worth seeing
        if not self.snapshots or self.snapshots[-1]["iteration"] != pl_module.iteration:
            self.snapshot(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        picked = [self.snapshots[i] for i in _pick([s["iteration"] for s in self.snapshots], self.max_panels)]
        real = self._real(trainer, pl_module).cpu().numpy()
        fig = figures.scatter_panels_figure(real, [(s["title"], s["fake"].numpy()) for s in picked])
        figures.save_png(fig, self.dirpath / "scatter.png")
        last = self.snapshots[-1]
        figures.save_png(self._decision_figure(real, last), self.dirpath / "decision_surface.png")
        if self.feature_space:
            figures.save_png(figures.feature_space_figure([self._panel(s) for s in picked]),
                             self.dirpath / "feature_space.png")

    @torch.no_grad()
    def snapshot(self, trainer, pl_module: GANModule) -> None:
        dm, device = trainer.datamodule, pl_module.device
        mean = getattr(dm, "mean", torch.zeros(2)).to(device)
        std = getattr(dm, "std", torch.ones(2)).to(device)
        z = pl_module.prior.sample(self.n_points, generator=torch.Generator().manual_seed(0)).to(device)
        discriminator = pl_module.discriminator
        was_training = discriminator.training
        discriminator.eval()
        try:
            fake = pl_module.sample(z).float()
            real_data, fake_data = self._real(trainer, pl_module), fake * std + mean
            snap = {"iteration": pl_module.iteration, "fake": fake_data.cpu(), "title": f"iteration {pl_module.iteration}"}
            if getattr(dm, "dist", None) == "quadratic":
                snap["title"] += f"\nmedian |y − (10 + x²)| = {quadratic_residual(fake_data.cpu()):.4g}"
            x0, x1, y0, y1 = figures.bounds(real_data.cpu().numpy(), fake_data.cpu().numpy())
            xs, ys = np.linspace(x0, x1, self.grid), np.linspace(y0, y1, self.grid)
            snap["surface"] = self._surface(lambda p: discriminator((p - mean) / std), xs, ys, device)
            if self.feature_space:
                real = self._real(trainer, pl_module, data_units=False)
                snap["real_f"] = discriminator.features(real).cpu()
                snap["before_f"] = discriminator.features(fake).cpu()
                snap["after_f"] = discriminator.features(_after_one_generator_update(pl_module, z)).cpu()
                head = getattr(discriminator, "head", None)
                if head is not None:  # D's decision surface over its own feature plane
                    f0, f1, g0, g1 = figures.bounds(snap["real_f"].numpy(), snap["before_f"].numpy(),
                                                    snap["after_f"].numpy())
                    fx, fy = np.linspace(f0, f1, self.grid), np.linspace(g0, g1, self.grid)
                    snap["feature_surface"] = self._surface(lambda f: head(f).squeeze(-1), fx, fy, device)
        finally:
            discriminator.train(was_training)
        self.snapshots.append(snap)
        if len(self.snapshots) > 4 * self.max_panels:
            self.snapshots = [self.snapshots[i] for i in _pick([s["iteration"] for s in self.snapshots],
                                                               2 * self.max_panels)]
        if trainer.is_global_zero and (writer := _writer(trainer)) is not None:
            real = real_data.cpu().numpy()
            writer.add_figure("figures/decision_surface", self._decision_figure(real, snap), snap["iteration"])
            if self.feature_space:
                writer.add_figure("figures/feature_space", figures.feature_space_figure([self._panel(snap)]),
                                  snap["iteration"])

    def _real(self, trainer, pl_module: GANModule, data_units: bool = True) -> torch.Tensor:
        dm = trainer.datamodule
        real = dm.train_data[: self.n_points].to(pl_module.device)
        if not data_units:
            return real
        return real * getattr(dm, "std", torch.ones(2)).to(real.device) + getattr(dm, "mean", torch.zeros(2)).to(real.device)

    @staticmethod
    def _surface(logits_of, xs: np.ndarray, ys: np.ndarray, device) -> tuple[torch.Tensor, ...]:
        """(xs, ys, σ(logits) on the grid as [len(ys), len(xs)]), as CPU tensors (checkpoint-safe)."""
        gx, gy = np.meshgrid(xs, ys)
        points = torch.as_tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32, device=device)
        prob = torch.sigmoid(logits_of(points)).reshape(gx.shape).float().cpu()
        return torch.as_tensor(xs), torch.as_tensor(ys), prob

    @staticmethod
    def _decision_figure(real: np.ndarray, snap: dict):
        xs, ys, prob = (t.numpy() for t in snap["surface"])
        return figures.decision_surface_figure(xs, ys, prob, real, snap["fake"].numpy(),
                                               f"D(x), {snap['title'].splitlines()[0]}")

    @staticmethod
    def _panel(snap: dict) -> dict:
        surface = snap.get("feature_surface")
        return {"real": snap["real_f"].numpy(), "fake_before": snap["before_f"].numpy(),
                "fake_after": snap["after_f"].numpy(), "title": f"D features, {snap['title'].splitlines()[0]}",
                "surface": None if surface is None else tuple(t.numpy() for t in surface)}

    def state_dict(self) -> dict:
        return {"snapshots": self.snapshots}

    def load_state_dict(self, state: dict) -> None:
        self.snapshots = list(state.get("snapshots", []))


def _after_one_generator_update(pl_module: GANModule, z: torch.Tensor) -> torch.Tensor:
    """G(z) after one generator update against the current D, made on copies of G and its optimizer."""
    generator = copy.deepcopy(pl_module.generator)
    opt_g = pl_module.optimizers()[0]
    opt_g = getattr(opt_g, "optimizer", opt_g)  # unwrap LightningOptimizer
    optimizer = type(opt_g)(generator.parameters(), **opt_g.defaults)
    optimizer.load_state_dict(copy.deepcopy(opt_g.state_dict()))  # deep: the step must not touch the real state
    params = [p.requires_grad_(True) for p in generator.parameters()]
    with torch.enable_grad():
        loss = pl_module.loss.g(pl_module.discriminator(generator(z)))
        grads = torch.autograd.grad(loss, params)  # G's parameters only: D's .grad stays untouched
    for p, g in zip(params, grads):
        p.grad = g
    optimizer.step()
    generator.eval()
    return generator(z).float()
