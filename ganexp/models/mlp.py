"""Fully connected G and D: `mlp` (vanilla_gan), `mlp_small` (the label_smoothing and original_gan recipes), `toy_mlp` (toy_quadratic)."""
from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

from ganexp.config.checks import choice, flag

ACTIVATIONS = {
    "leaky_relu": lambda slope: nn.LeakyReLU(slope),
    "relu": lambda slope: nn.ReLU(),
    "tanh": lambda slope: nn.Tanh(),
}


def output_layer(out_range: Sequence[float] | None) -> nn.Module:
    """The generator's last activation, from the data's value range (`data.value_range`)."""
    if out_range is None:
        return nn.Identity()  # toy data: unbounded
    return {(-1.0, 1.0): nn.Tanh, (0.0, 1.0): nn.Sigmoid}[tuple(map(float, out_range))]()


def _stack(sizes: Sequence[int], activation: str, slope: float, dropout: float,
           linear_last: bool = False) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if not (linear_last and i == len(sizes) - 2):
            layers.append(ACTIVATIONS[activation](slope))
        if dropout:
            layers.append(nn.Dropout(dropout))
    return layers


INITS = ("default", "xavier", "kaiming")


def _init(module: nn.Module, init: str) -> None:
    """`default`: torch's; `xavier`: Glorot-normal, N(0, 2/(fan_in + fan_out)); `kaiming`: He-normal,
    N(0, 2/fan_in), which is what the original_gan recipe's `xavier_init` computes (stddev 1/sqrt(in_dim/2)). Zero biases."""
    if init == "default":
        return
    for m in module.modules():
        if isinstance(m, nn.Linear):
            if init == "xavier":
                nn.init.xavier_normal_(m.weight)
            else:  # kaiming (the constructors checked the name)
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


def spectral_normed(module: nn.Module, on: bool) -> nn.Module:
    """`module` with every Linear / Conv2d weight spectrally normalized (Miyato et al. 2018; torch's
    parametrization: one power iteration per forward in training), when `on`."""
    if flag("model.discriminator.spectral_norm", on):
        for m in list(module.modules()):
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.utils.parametrizations.spectral_norm(m)
    return module


class MLPGenerator(nn.Module):
    """z → hidden… → prod(out_shape), reshaped to out_shape ([C, H, W] or [2])."""

    stackable = True  # forward treats each sample on its own: ganexp/gan/stack.py may run members as one batch

    def __init__(self, latent_dim: int, out_shape: Sequence[int], hidden: Sequence[int] = (256, 512, 1024),
                 activation: str = "leaky_relu", slope: float = 0.2, out_range: Sequence[float] | None = (-1, 1),
                 init: str = "default"):
        super().__init__()
        choice("model.generator.init", init, INITS)
        choice("model.generator.activation", activation, ACTIVATIONS)
        self.out_shape = tuple(out_shape)
        self.net = nn.Sequential(
            *_stack([latent_dim, *hidden], activation, slope, 0.0),
            nn.Linear(hidden[-1], math.prod(out_shape)),
            output_layer(out_range),
        )
        _init(self, init)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.out_shape)


class Discriminator(nn.Module):
    """`body` (x → features, the last hidden layer) and `head` (features → 1 logit)."""

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x)).squeeze(1)


class MLPDiscriminator(Discriminator):
    """x → hidden… → 1 logit. `features(x)` is the last hidden layer (2-d in `toy_mlp`).

    `linear_features`: no activation after the last hidden layer, as in the toy_quadratic recipe, whose
    2-unit feature layer is a plain dense layer (`h3 = dense(h2, 2)`).
    """

    stackable = True  # forward treats each sample on its own: ganexp/gan/stack.py may run members as one batch

    def __init__(self, in_shape: Sequence[int], hidden: Sequence[int] = (1024, 512, 256),
                 activation: str = "leaky_relu", slope: float = 0.2, dropout: float = 0.3,
                 init: str = "default", linear_features: bool = False, spectral_norm: bool = False):
        super().__init__()
        choice("model.discriminator.init", init, INITS)
        choice("model.discriminator.activation", activation, ACTIVATIONS)
        sizes = [math.prod(in_shape), *hidden]
        self.body = nn.Sequential(nn.Flatten(), *_stack(sizes, activation, slope, dropout, linear_features))
        self.head = nn.Linear(hidden[-1], 1)
        _init(self, init)
        spectral_normed(self, spectral_norm)  # after the init: it normalizes the initialized weights
