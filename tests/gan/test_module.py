"""The adversarial step, in process, on the real composed config."""

import pytest
import torch
from pytorch_lightning.callbacks import Callback

from tests.helpers import train_module
from train import train

@pytest.mark.parametrize("d_steps", [1, 3])
def test_limit_train_batches_runs_exactly_n_iterations_with_k_d_updates_each(d_steps, cfg_factory, tmp_path):
    n = 5
    cfg = cfg_factory("trainer.limit_train_batches=5", f"d_steps={d_steps}", "model=mlp_small", "batch_size=32")
    module = train_module(cfg)
    opt_g, opt_d = (opt.optimizer if hasattr(opt, "optimizer") else opt for opt in module.optimizers())
    g_steps = {int(s["step"]) for s in opt_g.state.values()}
    d_steps_done = {int(s["step"]) for s in opt_d.state.values()}
    assert module.iteration == n
    assert g_steps == {n} and d_steps_done == {d_steps * n}
    assert module.trainer.global_step == (d_steps + 1) * n  # why ganexp counts iterations itself


def test_training_moves_both_networks_and_logs_on_the_iteration_axis(cfg_factory, tmp_path):
    cfg = cfg_factory("trainer.limit_train_batches=4", "log_every=2", "model=mlp_small", "batch_size=32")
    module = train_module(cfg)
    assert set(module.last_logged) >= {"loss/d", "loss/g", "d/acc", "noise/sigma", "lr/g", "lr/d", "grad/g_norm"}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path)).Reload()
    assert [e.step for e in events.Scalars("loss/d")] == [0, 2]  # iterations 0 and 2, not global_step


def test_label_smoothing_and_instance_noise_reach_the_step(cfg_factory):
    cfg = cfg_factory("trainer.limit_train_batches=1", "log_every=1", "model=mlp_small", "loss.label_smoothing=0.1",
                      "noise.instance_sigma=0.5", "noise.anneal=linear", "noise.anneal_epochs=2")
    module = train_module(cfg)
    assert module.loss.label_smoothing == 0.1
    assert module.last_logged["noise/sigma"] == pytest.approx(0.5)


def test_ttur_overrides_one_side(cfg_factory):
    cfg = cfg_factory("trainer.limit_train_batches=1", "optimizer.lr=1e-3", "optimizer.d.lr=4e-3", "model=mlp_small")
    module = train_module(cfg)
    opt_g, opt_d = module.optimizers()
    assert opt_g.param_groups[0]["lr"] == pytest.approx(1e-3) and opt_d.param_groups[0]["lr"] == pytest.approx(4e-3)
    assert opt_g.param_groups[0]["betas"] == (0.5, 0.999)


class PoisonAt:
    """A test callback: sets one generator weight to NaN after iteration `at` (no NaN loss is logged)."""

    def __new__(cls, at: int):
        from pytorch_lightning.callbacks import Callback

        class _Poison(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if pl_module.iteration == at:
                    with torch.no_grad():
                        next(pl_module.generator.parameters()).view(-1)[0] = float("nan")
        return _Poison()


@pytest.mark.parametrize("cause, overrides, reason", [
    ("loss", ["optimizer=sgd", "optimizer.lr=1e6", "log_every=1"], "non-finite loss at iteration "),
    ("parameters", ["log_every=1000", "ckpt_every=2"], "non-finite parameters at iteration 4"),
])
def test_divergence_has_one_owner_and_says_what_was_not_finite(cause, overrides, reason, cfg_factory, monkeypatch):
    from ganexp.run import lifecycle

    if cause == "parameters":  # NaN weights after iteration 3 (no loss is logged); the checkpoint at 4 finds them
        build_trainer = lifecycle.build_trainer

        def with_poison(cfg):
            trainer = build_trainer(cfg)
            trainer.callbacks.insert(0, PoisonAt(3))
            return trainer
        monkeypatch.setattr(lifecycle, "build_trainer", with_poison)
    record, objects = train(cfg_factory("model=mlp_small", "eval=none", "trainer.limit_train_batches=8", *overrides))
    module = objects["module"]
    assert record["status"] == "diverged" and record["reason"] == module.divergence
    assert module.divergence.startswith(reason) and record["diverged_at"] == module.diverged_at
    assert record["iteration"] < 8


class CountGenerator(Callback):
    """G's forward calls inside each training batch (grids and metrics excluded), one count per iteration,
    kept on the module (`g_forwards`)."""

    def on_train_start(self, trainer, pl_module):
        self.inside, pl_module.g_forwards = False, []

        def count(*_):  # returns None: the output stays G's
            if self.inside:
                pl_module.g_forwards[-1] += 1

        pl_module.generator.register_forward_hook(count)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.inside = True
        pl_module.g_forwards.append(0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.inside = False


@pytest.mark.parametrize("reuse, d_steps, per_iteration", [(False, 1, 2), (True, 1, 1), (False, 3, 4), (True, 3, 3)])
def test_reuse_fake_scores_the_last_d_steps_batch_with_one_generator_forward_fewer(reuse, d_steps, per_iteration,
                                                                                  cfg_factory, monkeypatch):
    monkeypatch.setenv("GANEXP_PARTS", "callback=tests.gan.test_module.CountGenerator")
    cfg = cfg_factory("trainer.limit_train_batches=3", f"d_steps={d_steps}", f"reuse_fake={str(reuse).lower()}",
                      "model=mlp_small", "batch_size=32", "eval=none", "image_every=0",
                      "+callbacks.count._target_=tests.gan.test_module.CountGenerator")
    module = train_module(cfg)
    assert module.g_forwards == [per_iteration] * 3  # d_steps fresh batches (+ one for G unless reused)
    assert module.iteration == 3 and all(p.grad is not None for p in module.generator.parameters())  # G did learn


def test_reuse_fake_g_step_is_the_loss_of_the_updated_d_on_that_very_batch(cfg_factory):
    """One iteration by hand: z drawn from the run's draws, D stepped on G(z).detach(), then G stepped on
    loss.g(D'(G(z))); the run's weights after it equal the hand-made ones."""
    import copy

    import pytorch_lightning as pl

    from ganexp.run.build import build_datamodule, build_module

    cfg = cfg_factory("trainer.limit_train_batches=1", "reuse_fake=true", "model=mlp_small", "batch_size=32",
                      "eval=none", "image_every=0", "model.discriminator.dropout=0",
                      "optimizer=sgd")  # G's update ∝ its gradient (Adam's first step is ~lr·sign: less telling)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # as train.py builds a run
    datamodule = build_datamodule(cfg.data)
    datamodule.setup("fit")
    start = build_module(cfg)
    real = next(iter(datamodule.train_dataloader()))  # the run's first batch (epoch 0's seeded order)
    g, d = copy.deepcopy(start.generator), copy.deepcopy(start.discriminator)
    module = train_module(cfg)
    draws = torch.Generator().manual_seed(start.draw_seed)
    opt_g, opt_d = start.optimizer_g(g.parameters()), start.optimizer_d(d.parameters())
    fake = g(start.prior.sample(len(real), "cpu", draws))
    d_loss = start.loss.d(d(real), d(fake.detach()))  # no penalty in this config
    opt_d.zero_grad(), d_loss.backward(), opt_d.step()
    g_loss = start.loss.g(d(fake))
    opt_g.zero_grad(), g_loss.backward(), opt_g.step()
    for mine, theirs in zip([*g.parameters(), *d.parameters()], [*module.generator.parameters(), *module.discriminator.parameters()]):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_optimizer_steps_skip_lightnings_nvml_cuda_check_where_there_is_no_gpu():
    """Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 on import and torch's optimizers check CUDA at every
    step(); without a GPU that NVML check cost ~170 µs a step. ganexp turns it off only where no GPU is seen."""
    import subprocess
    import sys

    code = ("import os, pytorch_lightning, torch; before = os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK'); "
            "import ganexp.gan.module; print(before, os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK'), "
            "torch.cuda.device_count())")
    before, after, gpus = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         check=True).stdout.split()
    assert before == "1"  # Lightning's, as imported
    assert after == ("0" if gpus == "0" else "1")
