"""2-d toy data: scatter, D's decision surface and D's 2-d feature space before / after one G step."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from ganexp.callbacks import figures
from ganexp.callbacks.base import Periodic, pick
from ganexp.errors import ConfigError
from ganexp.data.toy import quadratic_residual
from ganexp.models import eval_mode


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


class ToyFigures(Periodic):
    """The toy_quadratic recipe's figures for 2-d data (data=toy), every `every` iterations and at the end.

    Each snapshot draws G on `n_points` fixed latent vectors and logs to TensorBoard `figures/decision_surface`
    (σ(D(x)) under real and generated points, in data units) and `figures/feature_space` (D's 2-d features of
    real points and of the generated ones before and after one G update, made on copies: training is untouched).
    At the end, into `dirpath`: scatter.png and feature_space.png (up to `max_panels` snapshots) and
    decision_surface.png (the last one).
    """

    def __init__(self, dirpath: str, every: int = 1000, n_points: int = 1000, grid: int = 120,
                 max_panels: int = 4, feature_space: bool = True):
        super().__init__(every)
        self.dirpath, self.n_points = Path(dirpath), int(n_points)
        self.grid, self.max_panels, self.feature_space = int(grid), int(max_panels), bool(feature_space)
        self.snapshots: list[dict] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        shape = tuple(pl_module.run.data.shape)
        if shape != (2,):
            raise ConfigError(f"callbacks=toy draws 2-d points, but the data is {list(shape)}-shaped; "
                              "use data=toy, or callbacks=figures for images")
        if self.feature_space and (problem := feature_layer_problem(pl_module.discriminator, shape)):
            raise ConfigError(f"callbacks=toy draws D's 2-d feature space, but {problem}; use model=toy_mlp "
                              "(D hidden [16, 16, 2]) or set callbacks.toy.feature_space=false")

    def final(self, trainer, pl_module) -> None:
        if not self.snapshots or self.snapshots[-1]["iteration"] != pl_module.iteration:
            self.snapshot(trainer, pl_module)  # (a resumed run's last snapshot may be this iteration's)
        if not trainer.is_global_zero:
            return
        picked = [self.snapshots[i] for i in pick([s["iteration"] for s in self.snapshots], self.max_panels)]
        real, mean, std = self._points(pl_module)
        real = (real * std + mean).cpu().numpy()
        fig = figures.scatter_panels_figure(real, [(s["title"], s["fake"].numpy()) for s in picked])
        figures.save_png(fig, self.dirpath / "scatter.png")
        last = self.snapshots[-1]
        figures.save_png(self._decision_figure(real, last), self.dirpath / "decision_surface.png")
        if self.feature_space:
            figures.save_png(figures.feature_space_figure([self._panel(s) for s in picked]),
                             self.dirpath / "feature_space.png")

    @torch.no_grad()
    def snapshot(self, trainer, pl_module) -> None:
        dm, device = pl_module.run.data, pl_module.device
        real, mean, std = self._points(pl_module)
        z = pl_module.prior.sample(self.n_points, generator=torch.Generator().manual_seed(0)).to(device)
        discriminator = pl_module.discriminator
        with eval_mode(discriminator):
            fake = pl_module.sample(z).float()
            real_data, fake_data = real * std + mean, fake * std + mean
            snap = {"iteration": pl_module.iteration, "fake": fake_data.cpu(), "title": f"iteration {pl_module.iteration}"}
            if getattr(dm, "dist", None) == "quadratic":
                snap["title"] += f"\nmedian |y − (10 + x²)| = {quadratic_residual(fake_data.cpu()):.4g}"
            real_units = real_data.cpu().numpy()
            snap["surface"] = self._surface(lambda p: discriminator((p - mean) / std), device, real_units,
                                            fake_data.cpu().numpy())
            if self.feature_space:
                snap["real_f"] = discriminator.features(real).cpu()
                snap["before_f"] = discriminator.features(fake).cpu()
                snap["after_f"] = discriminator.features(after_one_generator_update(pl_module, z)).cpu()
                head = getattr(discriminator, "head", None)
                if head is not None:  # D's decision surface over its own feature plane
                    features = (snap[k].numpy() for k in ("real_f", "before_f", "after_f"))
                    snap["feature_surface"] = self._surface(lambda f: head(f).squeeze(-1), device, *features)
        self.snapshots.append(snap)
        if len(self.snapshots) > 4 * self.max_panels:
            self.snapshots = [self.snapshots[i] for i in pick([s["iteration"] for s in self.snapshots],
                                                               2 * self.max_panels)]
        if trainer.is_global_zero and (writer := pl_module.run.logger) is not None:
            writer.add_figure("figures/decision_surface", self._decision_figure(real_units, snap), snap["iteration"])
            if self.feature_space:
                writer.add_figure("figures/feature_space", figures.feature_space_figure([self._panel(snap)]),
                                  snap["iteration"])

    periodic = snapshot

    def _points(self, pl_module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the first `n_points` real points, mean, std) on the device: data units are points·std + mean."""
        dm, device = pl_module.run.data, pl_module.device
        return (dm.train_data[: self.n_points].to(device), getattr(dm, "mean", torch.zeros(2)).to(device),
                getattr(dm, "std", torch.ones(2)).to(device))

    def _surface(self, logits_of, device, *points: np.ndarray) -> tuple[torch.Tensor, ...]:
        """(xs, ys, σ(logits) on the `grid` x `grid` points xs × ys spanning `points` as [len(ys), len(xs)]), as CPU
        tensors (checkpoint-safe)."""
        x0, x1, y0, y1 = figures.bounds(*points)
        xs, ys = np.linspace(x0, x1, self.grid), np.linspace(y0, y1, self.grid)
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


def after_one_generator_update(pl_module, z: torch.Tensor) -> torch.Tensor:
    """G(z) after one generator update against the current D, made with the module's own
    `generator_loss` on copies of G and its optimizer; training's state and RNG are untouched."""
    generator = copy.deepcopy(pl_module.generator)
    opt_g = pl_module.optimizers()[0]
    opt_g = getattr(opt_g, "optimizer", opt_g)  # unwrap LightningOptimizer
    optimizer = type(opt_g)(generator.parameters(), **opt_g.defaults)
    optimizer.load_state_dict(copy.deepcopy(opt_g.state_dict()))  # deep: the step must not touch the real state
    params = [p.requires_grad_(True) for p in generator.parameters()]
    devices = [z.device] if z.device.type == "cuda" else []
    with torch.enable_grad(), torch.random.fork_rng(devices=devices):  # instance noise draws; training's RNG stays
        loss = pl_module.generator_loss(z, generator=generator)
        grads = torch.autograd.grad(loss, params)  # G's parameters only: D's .grad stays untouched
    for p, g in zip(params, grads):
        p.grad = g
    optimizer.step()
    generator.eval()
    return generator(z).float()
