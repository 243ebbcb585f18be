"""Latent priors and instance noise (Sønderby et al. 2016; Arjovsky & Bottou 2017)."""
from __future__ import annotations

import torch
from torch import Tensor

from ganexp.errors import ConfigError

PRIORS = ("normal", "uniform")
ANNEALS = ("none", "linear")


class LatentPrior:
    """z ~ N(0, I) or z ~ U(-1, 1) (seeds 003/004), of size `latent_dim`."""

    def __init__(self, prior: str = "normal", latent_dim: int = 100):
        if prior not in PRIORS:
            raise ConfigError(f"noise.prior={prior} is unknown; choose one of {', '.join(PRIORS)}")
        if int(latent_dim) < 1:
            raise ConfigError(f"noise.latent_dim={latent_dim} must be >= 1")
        self.prior, self.latent_dim = prior, int(latent_dim)

    def sample(self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
        shape = (n, self.latent_dim)
        if self.prior == "normal":
            return torch.randn(shape, device=device, generator=generator)
        return torch.rand(shape, device=device, generator=generator) * 2.0 - 1.0


class InstanceNoise:
    """σ of the Gaussian noise added to D's real and fake inputs, as a function of the epoch.

    `linear`: σ(e) = max(σ₀·(E - e)/E, σ_min) with E = anneal_epochs. Seed 000 is
    σ₀ = 0.75, E = 10, σ_min = 0.05. `none`: σ₀ throughout. σ₀ = 0 switches it off.
    """

    def __init__(self, instance_sigma: float = 0.0, instance_sigma_min: float = 0.0,
                 anneal: str = "none", anneal_epochs: int = 10):
        if instance_sigma < 0 or instance_sigma_min < 0:
            raise ConfigError(f"noise.instance_sigma={instance_sigma} and noise.instance_sigma_min="
                              f"{instance_sigma_min} must be >= 0")
        if anneal not in ANNEALS:
            raise ConfigError(f"noise.anneal={anneal} is unknown; choose one of {', '.join(ANNEALS)}")
        if anneal == "linear" and int(anneal_epochs) < 1:
            raise ConfigError(f"noise.anneal_epochs={anneal_epochs} must be >= 1 with noise.anneal=linear")
        self.sigma0, self.sigma_min = float(instance_sigma), float(instance_sigma_min)
        self.anneal, self.anneal_epochs = anneal, int(anneal_epochs)

    def sigma(self, epoch: int) -> float:
        if self.sigma0 == 0.0 or self.anneal == "none":
            return self.sigma0
        return max(self.sigma0 * (self.anneal_epochs - epoch) / self.anneal_epochs, self.sigma_min)


def add_noise(x: Tensor, sigma: float) -> Tensor:
    return x + sigma * torch.randn_like(x) if sigma > 0 else x
