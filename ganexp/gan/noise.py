"""Latent priors and instance noise (Sønderby et al. 2016; Arjovsky & Bottou 2017)."""
from __future__ import annotations

import torch
from torch import Tensor

from ganexp.config.checks import FLOAT, INT, choice, number
from ganexp.errors import ConfigError

PRIORS = ("normal", "uniform")
ANNEALS = ("none", "linear")
ANNEAL_PER = ("epoch", "iteration")  # σ from whole epochs, or from the fractional epoch at every iteration


class LatentPrior:
    """z ~ N(0, I) or z ~ U(-1, 1) (the label_smoothing and original_gan recipes), of size `latent_dim`."""

    def __init__(self, prior: str = "normal", latent_dim: int = 100):
        self.prior = choice("noise.prior", prior, PRIORS)
        self.latent_dim = number("noise.latent_dim", latent_dim, INT, lambda v: v >= 1, "an integer >= 1")

    def sample(self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None,
               out: Tensor | None = None) -> Tensor:
        """z [n, latent_dim]; drawn into `out` when given (a stack's buffer: the same numbers as a new tensor)."""
        z = torch.empty((n, self.latent_dim), device=device) if out is None else out
        if self.prior == "normal":
            return z.normal_(generator=generator)
        return z.uniform_(generator=generator).mul_(2.0).sub_(1.0)

    def truncated(self, n: int, threshold: float, generator: torch.Generator | None = None) -> Tensor:
        """z [n, latent_dim] ~ N(0, I) with every |z_i| > threshold drawn again until none is (the truncation trick,
        Brock et al. 2018: fewer, better samples), drawn by torch's inverse CDF; a normal prior only, threshold > 0."""
        number("--truncation", threshold, FLOAT, lambda v: v > 0, "a number > 0, e.g. --truncation 0.7")
        if self.prior != "normal":
            raise ConfigError(f"--truncation resamples a normal prior's |z_i| > t, but this generator was trained "
                              f"with noise.prior={self.prior}; drop --truncation")
        z = torch.empty(n, self.latent_dim)  # N(0, 1) cut at ±t: the same law as redrawing each |z_i| > t
        torch.nn.init.trunc_normal_(z, 0.0, 1.0, -threshold, threshold, generator=generator)
        return z


class InstanceNoise:
    """σ of the Gaussian noise added to D's real and fake inputs, as a function of the epoch: `linear`,
    σ(e) = max(σ₀·(E - e)/E, σ_min) with E = anneal_epochs and e the completed (`anneal_per=epoch`) or
    fractional (`anneal_per=iteration`) epochs; `none`, σ₀ throughout. σ₀ = 0 switches it off."""

    def __init__(self, instance_sigma: float = 0.0, instance_sigma_min: float = 0.0,
                 anneal: str = "none", anneal_epochs: int = 10, anneal_per: str = "epoch"):
        number("noise.instance_sigma", instance_sigma, FLOAT, lambda v: v >= 0, "a number >= 0 (0 = off)")
        number("noise.instance_sigma_min", instance_sigma_min, FLOAT, lambda v: v >= 0, "a number >= 0")
        choice("noise.anneal", anneal, ANNEALS)
        number("noise.anneal_epochs", anneal_epochs, INT, lambda v: v >= 1, "an integer >= 1")
        self.per_iteration = choice("noise.anneal_per", anneal_per, ANNEAL_PER) == "iteration"
        self.sigma0, self.sigma_min = float(instance_sigma), float(instance_sigma_min)
        self.anneal, self.anneal_epochs = anneal, int(anneal_epochs)

    def sigma(self, epoch: float) -> float:
        if self.sigma0 == 0.0 or self.anneal == "none":
            return self.sigma0
        return max(self.sigma0 * (self.anneal_epochs - epoch) / self.anneal_epochs, self.sigma_min)


def add_noise(x: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """x + σ·ε, ε ~ N(0, I) drawn from `generator` (torch's global RNG when None); x itself when σ = 0."""
    if sigma <= 0:
        return x
    return x + sigma * torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
