"""GANModule: the adversarial step, with Lightning's manual optimization.

One *iteration* = one batch = `d_steps` discriminator updates + one generator
update. Lightning's `global_step` counts optimizer steps (it rises by d_steps + 1
per batch, Lightning #17958), so ganexp counts iterations itself in
`self.iteration` and uses it for every step-based setting and x-axis.
"""
from __future__ import annotations

import math
import random
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ganexp.losses import GANLoss, gradient_penalty
from ganexp.noise import InstanceNoise, LatentPrior, add_noise

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]


class GANModule(pl.LightningModule):
    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        loss: GANLoss,
        prior: LatentPrior,
        instance_noise: InstanceNoise,
        optimizer_g: OptimizerFactory,
        optimizer_d: OptimizerFactory,
        d_steps: int = 1,
        log_every: int = 50,
        n_fixed: int = 64,
        seed: int = 0,
        config: dict | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        # The whole resolved config as a plain dict: checkpoints stay loadable with
        # torch.load(weights_only=True), and sample.py rebuilds the generator from it.
        self.save_hyperparameters(config or {}, logger=False)
        self.generator, self.discriminator = generator, discriminator
        self.loss, self.prior, self.instance_noise = loss, prior, instance_noise
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d
        self.d_steps, self.log_every = int(d_steps), int(log_every)
        self.iteration = 0  # completed iterations; saved in checkpoints
        self.diverged_at: int | None = None  # iteration whose loss was NaN/Inf
        self.last_logged: dict[str, float] = {}
        # A fixed latent batch, so image grids show the same z over training.
        self.register_buffer("fixed_z", prior.sample(n_fixed, generator=torch.Generator().manual_seed(seed)))

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)

    def configure_optimizers(self):
        return [self.optimizer_g(self.generator.parameters()), self.optimizer_d(self.discriminator.parameters())]

    def training_step(self, real: Tensor, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        sigma = self.instance_noise.sigma(self.current_epoch)  # annealed per epoch, as in seed 000
        log_now = self.iteration % self.log_every == 0
        n = len(real)

        for _ in range(self.d_steps):  # k discriminator updates (Goodfellow et al. 2014, Alg. 1)
            with self.toggled_optimizer(opt_d):
                fake = self.generator(self.prior.sample(n, self.device)).detach()
                real_logits = self.discriminator(add_noise(real, sigma))
                fake_logits = self.discriminator(add_noise(fake, sigma))
                d_loss = self.loss.d(real_logits, fake_logits)  # label smoothing lives in the loss
                if self.loss.gp_weight:
                    d_loss = d_loss + self.loss.gp_weight * gradient_penalty(self.discriminator, real, fake)
                opt_d.zero_grad(set_to_none=True)
                self.manual_backward(d_loss)
                d_norm = _grad_norm(self.discriminator) if log_now else None
                opt_d.step()

        with self.toggled_optimizer(opt_g):
            fake = self.generator(self.prior.sample(n, self.device))
            g_loss = self.loss.g(self.discriminator(add_noise(fake, sigma)))
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            g_norm = _grad_norm(self.generator) if log_now else None
            opt_g.step()

        if log_now:  # the only host-device sync: once every log_every iterations
            self._log_iteration(d_loss, g_loss, real_logits, fake_logits, d_norm, g_norm, sigma)
        self.iteration += 1

    def _log_iteration(self, d_loss, g_loss, real_logits, fake_logits, d_norm, g_norm, sigma) -> None:
        acc_real = (real_logits > 0).float().mean()
        acc_fake = (fake_logits < 0).float().mean()
        tensors = {
            "loss/d": d_loss, "loss/g": g_loss,
            "d/real_score": torch.sigmoid(real_logits).mean(), "d/fake_score": torch.sigmoid(fake_logits).mean(),
            "d/acc_real": acc_real, "d/acc_fake": acc_fake, "d/acc": (acc_real + acc_fake) / 2,
            "grad/d_norm": d_norm, "grad/g_norm": g_norm,
        }
        values = dict(zip(tensors, torch.stack([t.detach().float() for t in tensors.values()]).tolist()))
        opt_g, opt_d = self.optimizers()
        values.update({"noise/sigma": sigma,
                       "lr/g": opt_g.param_groups[0]["lr"], "lr/d": opt_d.param_groups[0]["lr"]})
        if self.logger is not None:
            self.logger.log_metrics(values, step=self.iteration)  # x-axis: iterations, not global_step
        self.log_dict({"loss/d": values["loss/d"], "loss/g": values["loss/g"]}, prog_bar=True, logger=False)
        self.last_logged = values
        if not (math.isfinite(values["loss/d"]) and math.isfinite(values["loss/g"])):
            self.diverged_at = self.iteration + 1  # counted in completed iterations
            self.trainer.should_stop = True

    @torch.no_grad()
    def sample(self, z: Tensor) -> Tensor:
        """G(z) in eval mode (batch norm running stats, no dropout), as sample.py draws it."""
        was_training = self.generator.training
        self.generator.eval()
        try:
            return self.generator(z)
        finally:
            self.generator.train(was_training)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["iteration"] = self.iteration
        checkpoint["rng"] = rng_state()  # a resumed run draws the same z, noise and dropout

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.iteration = int(checkpoint.get("iteration", 0))
        self._rng_to_restore = checkpoint.get("rng")

    def on_train_start(self) -> None:
        # Restored here, as late as possible: nothing between this and the first batch draws numbers.
        if getattr(self, "_rng_to_restore", None):
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def parameters_finite(self) -> bool:
        """One sync, only when a checkpoint is about to be written."""
        return bool(torch.stack([p.detach().isfinite().all() for p in self.parameters()]).all())


def rng_state() -> dict:
    """torch / CUDA / numpy / Python RNG states, as tensors and plain types (weights_only-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _grad_norm(module: nn.Module) -> Tensor:
    return torch.nn.utils.get_total_norm([p.grad for p in module.parameters() if p.grad is not None])
