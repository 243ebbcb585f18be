import pytest
import torch

from ganexp.errors import ConfigError
from ganexp.models.dcgan import DCGANDiscriminator, DCGANGenerator
from ganexp.models.mlp import MLPDiscriminator, MLPGenerator


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_dcgan_builds_for_the_data_resolution(shape):
    g, d = DCGANGenerator(16, shape, width=8), DCGANDiscriminator(shape, width=8)
    x = g(torch.randn(4, 16))
    assert x.shape == (4, *shape) and x.abs().max() <= 1
    assert d(x).shape == (4,)


def test_dcgan_refuses_sizes_it_cannot_build():
    with pytest.raises(ConfigError, match="cannot build for image size 30"):
        DCGANGenerator(16, (1, 30, 30))


@pytest.mark.parametrize("out_range, lo, hi", [((-1, 1), -1, 1), ((0, 1), 0, 1), (None, -float("inf"), float("inf"))])
def test_mlp_generator_output_follows_the_data_range(out_range, lo, hi):
    x = MLPGenerator(4, (1, 28, 28), hidden=[8], out_range=out_range)(torch.randn(5, 4) * 100)
    assert x.shape == (5, 1, 28, 28) and x.min() >= lo and x.max() <= hi


def test_toy_discriminator_exposes_a_two_dimensional_feature_layer():
    d = MLPDiscriminator((2,), hidden=[16, 16, 2], dropout=0.0)
    x = torch.randn(7, 2)
    assert d.features(x).shape == (7, 2) and d(x).shape == (7,)


def test_xavier_init_zeroes_biases():
    g = MLPGenerator(10, (2,), hidden=[128], activation="relu", init="xavier", out_range=None)
    assert all(m.bias.abs().sum() == 0 for m in g.modules() if isinstance(m, torch.nn.Linear))
