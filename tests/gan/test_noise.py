import pytest
import torch

from ganexp.errors import ConfigError
from ganexp.gan.noise import InstanceNoise, LatentPrior, add_noise


def test_linear_anneal_reproduces_seed_000():
    noise = InstanceNoise(instance_sigma=0.75, instance_sigma_min=0.05, anneal="linear", anneal_epochs=10)
    for epoch in range(15):
        assert noise.sigma(epoch) == pytest.approx(max(0.75 * (10 - epoch) / 10, 0.05))


def test_constant_and_off():
    assert InstanceNoise(0.3).sigma(7) == 0.3
    assert InstanceNoise(0.0, anneal="linear").sigma(0) == 0.0
    x = torch.ones(4)
    assert torch.equal(add_noise(x, 0.0), x)
    assert (add_noise(torch.zeros(10_000), 0.5).std().item()) == pytest.approx(0.5, rel=0.05)


def test_priors():
    g = torch.Generator().manual_seed(0)
    u = LatentPrior("uniform", 100).sample(1000, generator=g)
    assert u.shape == (1000, 100) and u.min() >= -1 and u.max() <= 1
    assert u.min() < -0.99 and u.max() > 0.99  # covers [-1, 1], not [0, 1]
    n = LatentPrior("normal", 7).sample(20_000, generator=g)
    assert n.shape == (20_000, 7)
    assert n.mean().item() == pytest.approx(0, abs=0.02) and n.std().item() == pytest.approx(1, abs=0.02)


@pytest.mark.parametrize("kwargs, words", [
    ({"prior": "gaussian"}, "noise.prior=gaussian"),
    ({"latent_dim": 0}, "noise.latent_dim=0"),
])
def test_bad_prior(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        LatentPrior(**kwargs)


def test_negative_sigma():
    with pytest.raises(ConfigError, match="noise.instance_sigma=-0.1"):
        InstanceNoise(-0.1)
