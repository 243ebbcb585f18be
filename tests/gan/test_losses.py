import math
from pathlib import Path

import pytest
import torch
from torch import nn

from ganexp.errors import ConfigError
from ganexp.gan.losses import GANLoss, gradient_penalty

REAL = torch.tensor([2.0, -1.0])
FAKE = torch.tensor([0.5, -3.0])


def sig(x):
    return 1 / (1 + math.exp(-x))


def mean(values):
    return sum(values) / len(values)


def test_bce_discriminator_loss_is_the_sum_of_the_real_and_fake_cross_entropies():
    expected = mean([-math.log(sig(r)) for r in REAL.tolist()]) + mean([-math.log(1 - sig(f)) for f in FAKE.tolist()])
    assert GANLoss("nonsaturating").d(REAL, FAKE).item() == pytest.approx(expected, rel=1e-6)
    assert GANLoss("minimax").d(REAL, FAKE).item() == pytest.approx(expected, rel=1e-6)


def test_one_sided_label_smoothing_moves_only_the_real_target():
    s = 0.1
    real = mean([-(1 - s) * math.log(sig(r)) - s * math.log(1 - sig(r)) for r in REAL.tolist()])
    fake = mean([-math.log(1 - sig(f)) for f in FAKE.tolist()])
    assert GANLoss("nonsaturating", label_smoothing=s).d(REAL, FAKE).item() == pytest.approx(real + fake, rel=1e-6)


def test_generator_losses():
    assert GANLoss("nonsaturating").g(FAKE).item() == pytest.approx(mean([-math.log(sig(f)) for f in FAKE.tolist()]))
    assert GANLoss("minimax").g(FAKE).item() == pytest.approx(mean([math.log(1 - sig(f)) for f in FAKE.tolist()]))
    assert GANLoss("lsgan").g(FAKE).item() == pytest.approx(mean([0.5 * (f - 1) ** 2 for f in FAKE.tolist()]))
    assert GANLoss("hinge").g(FAKE).item() == pytest.approx(1.25)
    assert GANLoss("wgan_gp").g(FAKE).item() == pytest.approx(1.25)


def test_minimax_generator_saturates_where_nonsaturating_does_not():
    confident_reject = torch.tensor([-10.0], requires_grad=True)  # D sure the fake is fake
    GANLoss("minimax").g(confident_reject).backward()
    minimax_grad = confident_reject.grad.abs().item()
    confident_reject.grad = None
    GANLoss("nonsaturating").g(confident_reject).backward()
    assert minimax_grad == pytest.approx(sig(-10), rel=1e-4)  # ~4.5e-5: vanishes
    assert confident_reject.grad.abs().item() == pytest.approx(1 - sig(-10), rel=1e-4)  # ~1


def test_lsgan_hinge_wasserstein_discriminator_losses():
    s = 0.2
    assert GANLoss("lsgan", label_smoothing=s).d(REAL, FAKE).item() == pytest.approx(
        mean([0.5 * (r - (1 - s)) ** 2 for r in REAL.tolist()]) + mean([0.5 * f ** 2 for f in FAKE.tolist()]))
    assert GANLoss("hinge").d(REAL, FAKE).item() == pytest.approx(mean([0, 2]) + mean([1.5, 0]))
    assert GANLoss("wgan_gp", gp_weight=10).d(REAL, FAKE).item() == pytest.approx(-1.25 - 0.5)


def test_stable_form_does_not_overflow():
    big = torch.tensor([1000.0, -1000.0])
    assert torch.isfinite(GANLoss("nonsaturating").d(big, big))
    assert torch.isfinite(GANLoss("minimax").g(big))


@pytest.mark.parametrize("name", ["hinge", "wgan_gp"])
def test_label_smoothing_on_a_loss_without_targets_is_an_error(name):
    with pytest.raises(ConfigError, match=f"label_smoothing=0.1 has no meaning for loss={name}"):
        GANLoss(name, label_smoothing=0.1)


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_label_smoothing_out_of_range(bad):
    with pytest.raises(ConfigError, match=r"loss.label_smoothing=.* \[0, 1\)"):
        GANLoss("nonsaturating", label_smoothing=bad)


def test_unknown_loss_lists_the_choices():
    with pytest.raises(ConfigError, match="minimax, nonsaturating, lsgan, hinge, wgan_gp"):
        GANLoss("nonsaturatingg")


def test_gradient_penalty_of_a_linear_critic_is_its_weight_norm_minus_one_squared():
    critic = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[3.0, 0.0, 4.0]]))  # ‖w‖ = 5 everywhere
    gp = gradient_penalty(critic, torch.randn(2, 8, 3), torch.randn(2, 8, 3), torch.rand(2, 8, 1))
    assert gp.tolist() == pytest.approx([(5 - 1) ** 2] * 2)  # one per member


def test_adding_a_loss_is_one_function_pair_and_one_yaml(tmp_path):
    """README's "Extending ganexp": register the pair, drop a yaml into conf/loss/, train with loss=<name>."""
    import shutil

    from hydra import compose, initialize_config_dir

    from ganexp.gan.losses import LOSSES, register_loss
    from ganexp.run.resume import register_resolvers
    from tests.helpers import CONF, FAST, train_module

    calls = {"d": 0, "g": 0}

    def l1_d(real, fake, label_smoothing=0.0):  # D pushes real logits up to 1 - s and fake ones down to 0
        calls["d"] += 1
        return (real - (1 - label_smoothing)).abs().mean() + fake.abs().mean()

    def l1_g(fake):
        calls["g"] += 1
        return (fake - 1).abs().mean()

    register_loss("l1", l1_d, l1_g, has_targets=True)
    try:
        conf = Path(shutil.copytree(CONF, tmp_path / "conf"))
        (conf / "loss" / "l1.yaml").write_text("_target_: ganexp.gan.losses.GANLoss\nname: l1\nlabel_smoothing: 0.1\n"
                                               "gp_weight: 0.0\n")
        register_resolvers()
        with initialize_config_dir(str(conf), version_base="1.3"):
            cfg = compose("train", overrides=[f"paths.output_dir={tmp_path / 'run'}", *FAST, "eval=none", "loss=l1",
                                              "model=mlp_small", "trainer.limit_train_batches=3", "log_every=1",
                                              "d_steps=2"])
        module = train_module(cfg)
        assert module.iteration == 3 and module.loss.name == "l1" and module.loss.label_smoothing == 0.1
        assert calls == {"d": 6, "g": 3}  # 2 D steps and 1 G step per iteration
        assert module.last_logged["loss/g"] >= 0
    finally:
        LOSSES.pop("l1")
