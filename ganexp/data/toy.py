"""2-D toy distributions: the toy_quadratic recipe's quadratic and the usual mode-collapse tests.

quadratic: x ~ U(-50, 50), y = 10 + x² (toy_quadratic).
ring:      8 Gaussians on a circle of radius 2, σ = 0.02.
grid:      25 Gaussians on {-4, -2, 0, 2, 4}², σ = 0.05.
With `standardize: true` each coordinate is z-scored with the sample's mean and
std (quadratic's y spans 10..2510, too wide for a small net); `mean`/`std` are kept.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ganexp.data.base import TensorDataModule
from ganexp.config.checks import choice
from ganexp.errors import ConfigError

DISTRIBUTIONS = ("quadratic", "ring", "grid")


def sample_toy(dist: str, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """n points of `dist` as [n, 2] float32, with the mode index of each point (None for quadratic)."""
    if dist == "quadratic":
        x = torch.rand(n, generator=generator) * 100.0 - 50.0
        return torch.stack([x, 10.0 + x.square()], dim=1), None
    centers, sigma = mode_centers(dist)
    mode = torch.randint(len(centers), (n,), generator=generator)
    return centers[mode] + sigma * torch.randn(n, 2, generator=generator), mode


def mode_centers(dist: str) -> tuple[Tensor, float]:
    if dist == "ring":
        angles = torch.arange(8) * (2 * math.pi / 8)
        return 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1), 0.02
    if dist == "grid":
        axis = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
        return torch.cartesian_prod(axis, axis), 0.05
    raise ConfigError(f"data.dist={dist} has no modes; choose ring or grid")


class ToyDataModule(TensorDataModule):
    metrics_name = "toy"

    def __init__(self, dist: str = "ring", n: int = 10_000, standardize: bool = True, **kwargs):
        super().__init__(**kwargs)
        choice("data.dist", dist, DISTRIBUTIONS)
        self.dist, self.n, self.standardize = dist, int(n), standardize
        self.mean, self.std = torch.zeros(2), torch.ones(2)

    def load(self):
        points, modes = sample_toy(self.dist, self.n, torch.Generator().manual_seed(self.seed))
        if self.standardize:
            self.mean, self.std = points.mean(0), points.std(0)
            points = (points - self.mean) / self.std
        return points, modes


def quadratic_residual(points: Tensor) -> float:
    """Median |y − (10 + x²)| of points in data units: 0 when every point lies on the toy_quadratic recipe's curve."""
    x, y = points.double().unbind(1)
    return float((y - (10.0 + x.square())).abs().median())
