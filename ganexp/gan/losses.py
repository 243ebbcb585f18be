"""GAN losses as pure functions of discriminator logits.

Every function takes logits shaped [B] or [B, 1] and returns a scalar. The discriminator loss is the *sum*
of its real and fake terms (Goodfellow et al. 2014, Alg. 1), not their mean; binary cross-entropy is written
with softplus, -log σ(x) = softplus(-x). `label_smoothing` s is one-sided (Salimans et al. 2016): the real
target becomes 1 - s, the fake target stays 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ganexp.config.checks import FLOAT, INT, choice, number
from ganexp.errors import ConfigError


def bce_d_loss(real: Tensor, fake: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """-[t·log σ(r) + (1-t)·log(1-σ(r))] - log(1-σ(f)), with real target t = 1 - s."""
    t = 1.0 - label_smoothing
    real_term = t * F.softplus(-real) + (1.0 - t) * F.softplus(real)
    return real_term.mean() + F.softplus(fake).mean()


def minimax_g_loss(fake: Tensor) -> Tensor:
    """G minimizes log(1 - σ(f)) = -softplus(f): saturates when D rejects fakes (original_gan)."""
    return -F.softplus(fake).mean()


def nonsaturating_g_loss(fake: Tensor) -> Tensor:
    """G minimizes -log σ(f) = softplus(-f): strong gradients early on (the vanilla_gan and label_smoothing recipes)."""
    return F.softplus(-fake).mean()


def lsgan_d_loss(real: Tensor, fake: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Least squares (Mao et al. 2017): ½(r - (1-s))² + ½f²."""
    t = 1.0 - label_smoothing
    return 0.5 * (real - t).square().mean() + 0.5 * fake.square().mean()


def lsgan_g_loss(fake: Tensor) -> Tensor:
    return 0.5 * (fake - 1.0).square().mean()


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """relu(1 - r) + relu(1 + f) (Lim & Ye 2017; SAGAN)."""
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def wasserstein_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Critic loss f - r; the training step adds the gradient penalty (it needs D and inputs)."""
    return fake.mean() - real.mean()


def critic_g_loss(fake: Tensor) -> Tensor:
    """-f: the generator loss of hinge and WGAN."""
    return -fake.mean()


def gradient_penalty(discriminator: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017) per member: E[(‖∇D(x̂)‖₂ - 1)²] on the interpolates x̂ = α·real + (1-α)·fake;
    real, fake [M, N, ...], α [M, N, 1, ...] → [M]."""
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(mixed).sum(), mixed, create_graph=True)
    return (grad.flatten(2).norm(dim=2) - 1.0).square().mean(dim=1)


def r1_penalty(discriminator: Callable[[Tensor], Tensor], real: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018) per member: E[‖∇ₓD(x)‖²] on real data [M, N, ...] → [M] (γ/2 is the caller's)."""
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(x).sum(), x, create_graph=True)
    return grad.flatten(2).square().sum(dim=2).mean(dim=1)


@dataclass(frozen=True)
class LossPair:
    """One loss: D's and G's functions of logits, whether it has targets (label smoothing), and whether both
    are means over samples of a term of each sample's own logit (GANModule.losses)."""

    d: Callable[..., Tensor]
    g: Callable[[Tensor], Tensor]
    has_targets: bool
    sample_mean: bool = False


# The loss registry: `loss.name` chooses from here (conf/loss/<name>.yaml names one).
LOSSES: dict[str, LossPair] = {
    "minimax": LossPair(bce_d_loss, minimax_g_loss, True, sample_mean=True),
    "nonsaturating": LossPair(bce_d_loss, nonsaturating_g_loss, True, sample_mean=True),
    "lsgan": LossPair(lsgan_d_loss, lsgan_g_loss, True, sample_mean=True),
    "hinge": LossPair(hinge_d_loss, critic_g_loss, False, sample_mean=True),
    "wgan_gp": LossPair(wasserstein_d_loss, critic_g_loss, False, sample_mean=True),
}


def register_loss(name: str, d: Callable[..., Tensor], g: Callable[[Tensor], Tensor], has_targets: bool,
                  sample_mean: bool = False) -> None:
    """Add a loss: `d(real_logits, fake_logits[, label_smoothing])` and `g(fake_logits)`, scalars; with
    conf/loss/<name>.yaml (`_target_: ganexp.gan.losses.GANLoss`, `name: <name>`) it is `loss=<name>`.
    `sample_mean=True` promises LossPair.sample_mean (and a label_smoothing that broadcasts against the logits)."""
    LOSSES[name] = LossPair(d, g, has_targets, sample_mean)


class GANLoss:
    """The (d, g) pair chosen by `loss=<name>`, with its options bound."""

    def __init__(self, name: str, label_smoothing: float = 0.0, gp_weight: float = 0.0, r1_gamma: float = 0.0,
                 r1_every: int = 1):
        pair = LOSSES[choice("loss.name", name, LOSSES)]
        number("loss.label_smoothing", label_smoothing, FLOAT, lambda v: 0 <= v < 1, "a number in [0, 1)")
        if label_smoothing and not pair.has_targets:
            raise ConfigError(
                f"loss.label_smoothing={label_smoothing} has no meaning for loss={name} (it has no targets); "
                f"drop it or use loss={', '.join(n for n, p in LOSSES.items() if p.has_targets)}"
            )
        number("loss.gp_weight", gp_weight, FLOAT, lambda v: v >= 0, "a number >= 0 (0 = off)")
        number("loss.r1_gamma", r1_gamma, FLOAT, lambda v: v >= 0, "a number >= 0 (0 = off), e.g. 10")
        number("loss.r1_every", r1_every, INT, lambda v: v >= 1, "an integer >= 1 (16: StyleGAN2's lazy R1)")
        self.name, self.label_smoothing, self.gp_weight = name, float(label_smoothing), float(gp_weight)
        self.r1_gamma, self.r1_every = float(r1_gamma), int(r1_every)
        self._pair = pair

    def d(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        real_logits, fake_logits = real_logits.float(), fake_logits.float()  # fp32 losses under bf16 autocast
        targets = (self.label_smoothing,) if self._pair.has_targets else ()
        return self._pair.d(real_logits, fake_logits, *targets)

    def g(self, fake_logits: Tensor) -> Tensor:
        return self._pair.g(fake_logits.float())
