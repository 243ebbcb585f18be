"""The modern GAN toolbox, each option's mechanics checked with numbers: EMA of G, spectral norm,
R1 (lazy), bf16 autocast on CPU."""
from __future__ import annotations

import torch
from torch import nn

from ganexp.run.build import build_module
from ganexp.gan.losses import GANLoss, r1_penalty
from ganexp.models.dcgan import DCGANDiscriminator
from ganexp.models.mlp import MLPDiscriminator
from ganexp.gan.module import Single
from tests.helpers import make_cfg, train_module


def test_ema_weights_equal_the_closed_form_after_3_updates(tmp_path):
    decay = 0.75
    module = build_module(make_cfg(tmp_path, "eval=none", f"ema.decay={decay}", "ema.start=0"))
    params = list(module.generator.parameters())
    snapshots = []
    for it in range(4):  # iteration 0 copies G, then 3 averaging updates
        with torch.no_grad():
            for p in params:
                p.copy_(torch.randn_like(p))
        snapshots.append([p.detach().clone() for p in params])
        module.iteration = it
        module.update_ema()
    for i, ema in enumerate(module.generator_ema.parameters()):
        s0, s1, s2, s3 = (snap[i] for snap in snapshots)
        closed = decay**3 * s0 + (1 - decay) * (decay**2 * s1 + decay * s2 + s3)
        torch.testing.assert_close(ema, closed, rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in module.generator_ema.parameters())
    assert module.eval_generator is module.generator_ema


def test_ema_copies_g_until_its_start_and_training_never_steps_it(tmp_path):
    module = train_module(make_cfg(tmp_path, "eval=none", "ema.decay=0.5", "ema.start=1000"))
    for ema, raw in zip(module.generator_ema.parameters(), module.generator.parameters()):
        assert torch.equal(ema, raw)  # 22 iterations < start: a copy
    off = build_module(make_cfg(tmp_path / "off", "eval=none"))
    assert off.generator_ema is None and off.eval_generator is off.generator


def test_spectral_norm_layers_have_largest_singular_value_one():
    torch.manual_seed(0)  # the power iteration's start and the inputs: not whatever an earlier test left
    for d in (MLPDiscriminator([1, 8, 8], hidden=[64, 32], spectral_norm=True),
              DCGANDiscriminator([1, 16, 16], width=8, spectral_norm=True)):
        d.train()
        for _ in range(50):  # one power iteration per forward in training mode
            d(torch.randn(4, *([1, 8, 8] if isinstance(d, MLPDiscriminator) else [1, 16, 16])))
        layers = [m for m in d.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        assert layers and all(nn.utils.parametrize.is_parametrized(m, "weight") for m in layers)
        for m in layers:
            sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
            assert abs(float(sigma) - 1.0) < 1e-2, (m, float(sigma))
    plain = MLPDiscriminator([1, 8, 8], hidden=[64, 32])
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in plain.modules())


def test_r1_equals_the_hand_computed_gradient_norm_and_is_lazy(tmp_path):
    d = nn.Linear(3, 1)
    with torch.no_grad():
        d.weight.copy_(torch.tensor([[1.0, -2.0, 2.0]]))  # ∇ₓD = w, ‖w‖² = 9
    real = torch.randn(2, 5, 3)  # two members of five samples each
    assert r1_penalty(d, real).tolist() == [9.0, 9.0]
    # in the step: γ/2 · every · ‖w‖² added to D's loss at iterations 0, 4, 8, ... only
    module = build_module(make_cfg(tmp_path, "loss.r1_gamma=10", "loss.r1_every=4", "data=toy", "model=toy_mlp"))
    module.configure_optimizers()
    module.D = Single(lambda x: d(x).squeeze(-1))
    real = torch.randn(1, 5, 2)
    at = {}
    for it in (0, 1, 4):
        module.iteration = it
        module._draws = torch.Generator().manual_seed(0)  # the same fake batch each time
        d.weight.data = torch.tensor([[1.0, -2.0]])  # ‖w‖² = 5 on 2-d points
        d.bias.data.zero_()
        at[it] = float(module.discriminator_loss(real, [0.0])[0].detach())
    assert abs(at[0] - (at[1] + 10.0 / 2 * 4 * 5.0)) < 1e-4
    assert abs(at[4] - at[0]) < 1e-6 and at[1] != at[0]


def test_bf16_mixed_on_cpu_keeps_fp32_losses_and_checkpoints(tmp_path):
    loss = GANLoss("nonsaturating")
    with torch.autocast("cpu", torch.bfloat16):
        logits = nn.Linear(4, 1)(torch.randn(8, 4)).squeeze(1)
        assert logits.dtype == torch.bfloat16 and loss.g(logits).dtype == torch.float32
    module = train_module(make_cfg(tmp_path, "eval=none", "trainer.precision=bf16-mixed", "ckpt_every=10"))
    assert module.iteration == 22 and module.diverged_at is None
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
