"""DCGAN (Radford et al. 2016) built for the data's resolution: 8, 28, 32, 64, …

The resolution is halved down to a base of 4 (or 7 for 28) and the nets use one
stride-2 (transposed) convolution per halving, with batch norm in between.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ganexp.config.checks import flag
from ganexp.errors import ConfigError
from ganexp.models.mlp import Discriminator, output_layer, spectral_normed


def _halvings(size: int) -> tuple[int, int]:
    n = 0
    while size % 2 == 0 and size // 2 >= 4:
        size, n = size // 2, n + 1
    if n == 0 or size > 8:
        raise ConfigError(f"model=dcgan cannot build for image size {size * 2 ** n}; "
                          "use a size of 4·2ⁿ or 7·2ⁿ (8, 28, 32, 64, …)")
    return size, n


def _needs_images(shape: Sequence[int]) -> None:
    if len(shape) != 3:
        raise ConfigError(f"model=dcgan needs images, but the data is {list(shape)}-shaped; "
                          "use model=toy_mlp or model=mlp with data=toy")


class DCGANGenerator(nn.Module):
    def __init__(self, latent_dim: int, out_shape: Sequence[int], width: int = 64, out_range: Sequence[float] = (-1, 1)):
        super().__init__()
        _needs_images(out_shape)
        channels, height, width_px = out_shape
        if height != width_px:
            raise ConfigError(f"model=dcgan needs square images, got {height}x{width_px}")
        base, n = _halvings(height)
        ch = [width * 2 ** i for i in reversed(range(n))]  # e.g. [256, 128, 64] for n = 3
        self.project = nn.Sequential(
            nn.Linear(latent_dim, ch[0] * base * base, bias=False),
            nn.Unflatten(1, (ch[0], base, base)), nn.BatchNorm2d(ch[0]), nn.ReLU(True))
        layers: list[nn.Module] = []
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ch[-1], channels, 4, 2, 1), output_layer(out_range)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(self.project(z))


class DCGANDiscriminator(Discriminator):
    def __init__(self, in_shape: Sequence[int], width: int = 64, slope: float = 0.2, spectral_norm: bool = False,
                 batch_norm: bool = True):
        super().__init__()
        _needs_images(in_shape)
        channels, height, _ = in_shape
        base, n = _halvings(height)
        ch = [width * 2 ** i for i in range(n)]  # e.g. [64, 128, 256]
        layers: list[nn.Module] = [nn.Conv2d(channels, ch[0], 4, 2, 1), nn.LeakyReLU(slope, True)]
        flag("model.discriminator.batch_norm", batch_norm)
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            norm = [nn.BatchNorm2d(c_out)] if batch_norm else []
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not norm), *norm, nn.LeakyReLU(slope, True)]
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(ch[-1] * base * base, 1)
        spectral_normed(self, spectral_norm)
