"""GANModule: the adversarial step, with Lightning's manual optimization.

One *iteration* = one batch = `d_steps` discriminator updates + one generator
update. Lightning's `global_step` counts optimizer steps (it rises by d_steps + 1
per batch, Lightning #17958), so ganexp counts iterations itself in
`self.iteration` and uses it for every step-based setting and x-axis.
"""
from __future__ import annotations

import copy
import math
import os
import random
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ganexp.losses import GANLoss
from ganexp.noise import InstanceNoise, LatentPrior, add_noise
from ganexp.tensorboard import write_layout

# Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 when imported (a CUDA check that never initializes CUDA, so
# forked processes stay usable), and torch's optimizers make that check at every step() (their graph-capture
# health check). Where NVML finds no GPU it costs ~80 µs a call against ~2 µs for torch's own check: 2 calls
# per iteration, 3-6 % of a stacked toy step (py-spy). With no GPU there is no CUDA to keep uninitialized.
if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and torch.cuda.device_count() == 0:
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]
DRAW_SEED = 1 << 40  # training's draws: a stream of their own, apart from the fixed batch's and the data order's


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
        ema_decay: float = 0.0,
        ema_start: int = 0,
        reuse_fake: bool = False,
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
        # reuse_fake: G's step scores the fake batch of the last D step (one G forward per iteration, as the
        # seeds 002/003 do) instead of drawing a fresh one.
        self.reuse_fake = bool(reuse_fake)
        self.iteration = 0  # completed iterations; saved in checkpoints
        self.diverged_at: int | None = None  # set by _diverge only: the iteration NaN/Inf was found at
        self.divergence: str | None = None  # ...and why, e.g. "non-finite loss at iteration 12"
        self.interrupted: str | None = None  # set by request_stop only: the signal that asked to stop
        self.training_started = False  # True from on_train_start: before it, a signal stops at once (signals.py)
        self.last_logged: dict[str, float] = {}  # the last logged scalars, with their "iteration"
        # EMA of G's weights (Yazıcı et al. 2019; StyleGAN's G_ema): what evaluation, best.ckpt, grids,
        # sample, evaluate and export use; training uses the raw G. Until `ema_start` it copies G.
        self.ema_decay, self.ema_start = float(ema_decay), int(ema_start)
        self.generator_ema = copy.deepcopy(generator).requires_grad_(False) if self.ema_decay > 0 else None
        # A fixed latent batch, so image grids show the same z over training.
        self.register_buffer("fixed_z", prior.sample(n_fixed, generator=torch.Generator().manual_seed(seed)))
        # Training's z, instance noise and penalty draws come from a generator of the run's own (seeded from
        # `seed`, saved in checkpoints): a stacked sweep member (ganexp/stack.py) draws exactly what its
        # separate run draws. Dropout masks still come from torch's global RNG.
        self.draw_seed = DRAW_SEED + int(seed)
        self._draws: torch.Generator | None = None

    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)

    def configure_optimizers(self):
        return [self.optimizer_g(self.generator.parameters()), self.optimizer_d(self.discriminator.parameters())]

    def training_step(self, real: Tensor, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        sigma = self.sigma()
        log_now = self.iteration % self.log_every == 0
        n = len(real)

        for step in range(self.d_steps):  # k discriminator updates (Goodfellow et al. 2014, Alg. 1)
            # with reuse_fake, the last D step's fake batch keeps G's graph (made before D's toggle turns
            # G's requires_grad off) and the G step below scores it again with the updated D
            fake = self.generator(self.prior.sample(n, self.device, self.draws)) \
                if self.reuse_fake and step == self.d_steps - 1 else None
            with self.toggled_optimizer(opt_d):
                d_loss, real_logits, fake_logits = self.discriminator_loss(real, sigma, fake)
                opt_d.zero_grad(set_to_none=True)
                self.manual_backward(d_loss)
                d_norm = _grad_norm(self.discriminator) if log_now else None
                opt_d.step()

        with self.toggled_optimizer(opt_g):
            z = None if self.reuse_fake else self.prior.sample(n, self.device, self.draws)
            g_loss = self.generator_loss(z, sigma, fake=fake)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            g_norm = _grad_norm(self.generator) if log_now else None
            opt_g.step()
        if self.generator_ema is not None:
            self.update_ema()

        if log_now:  # the only host-device sync: once every log_every iterations
            self._log_iteration(d_loss, g_loss, real_logits, fake_logits, d_norm, g_norm, sigma)
        self.iteration += 1

    @property
    def draws(self) -> torch.Generator:
        """The generator training draws z and noise from, on this module's device."""
        if self._draws is None or self._draws.device != self.device:
            self._draws = torch.Generator(self.device).manual_seed(self.draw_seed)
        return self._draws

    @property
    def eval_generator(self) -> nn.Module:
        """The generator that is scored, sampled and exported: the EMA one when there is one."""
        return self.generator if self.generator_ema is None else self.generator_ema

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema ← decay·ema + (1 - decay)·G after each G step (a copy up to iteration `ema_start`): two
        multi-tensor kernels, no host sync. Buffers (batch-norm statistics) are copied."""
        ema, raw = list(self.generator_ema.parameters()), list(self.generator.parameters())
        if self.iteration <= self.ema_start:
            torch._foreach_copy_(ema, raw)
        else:
            torch._foreach_lerp_(ema, raw, 1.0 - self.ema_decay)
        for mine, theirs in zip(self.generator_ema.buffers(), self.generator.buffers()):
            mine.copy_(theirs)

    def sigma(self) -> float:
        """Instance noise σ now: annealed per whole epoch (the instance_noise recipe's tutorial recomputes
        it from the fractional epoch every batch; noise.anneal_per=iteration does that)."""
        epochs = self.current_epoch
        if self.instance_noise.per_iteration and self._trainer is not None and self.trainer.num_training_batches:
            epochs = self.iteration / max(int(self.trainer.num_training_batches), 1)
        return self.instance_noise.sigma(epochs)

    def discriminator_loss(self, real: Tensor, sigma: float, fake: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(D's loss, D(real) logits, D(fake) logits) on a detached fake batch (`fake`, or a fresh one), both
        inputs noised."""
        fake = (self.generator(self.prior.sample(len(real), self.device, self.draws)) if fake is None else fake).detach()
        real_logits = self.discriminator(add_noise(real, sigma, self.draws))
        fake_logits = self.discriminator(add_noise(fake, sigma, self.draws))
        loss = self.loss.discriminator_loss(self.discriminator, real, fake, real_logits, fake_logits, self.iteration,
                                            self.draws)
        return loss, real_logits, fake_logits

    def generator_loss(self, z: Tensor | None, sigma: float | None = None, generator: nn.Module | None = None,
                       fake: Tensor | None = None) -> Tensor:
        """G's loss on G(z) as D sees it (instance noise included); `generator` defaults to this run's G
        (the D-feature-space figure passes a copy, so its "one G step" is the step training takes);
        `fake`: a batch G already made with its graph (reuse_fake: the last D step's), scored instead of G(z)."""
        own = generator is None
        generator = self.generator if own else generator
        sigma = self.sigma() if sigma is None else sigma  # a copy's step (figures) leaves training's draws alone
        fake = generator(z) if fake is None else fake
        return self.loss.g(self.discriminator(add_noise(fake, sigma, self.draws if own else None)))

    def _log_iteration(self, d_loss, g_loss, real_logits, fake_logits, d_norm, g_norm, sigma) -> None:
        tensors = scalars(d_loss, g_loss, real_logits, fake_logits, d_norm, g_norm)
        values = dict(zip(tensors, torch.stack(list(tensors.values())).tolist()))
        opt_g, opt_d = self.optimizers()
        self.record(values, sigma, opt_g.param_groups[0]["lr"], opt_d.param_groups[0]["lr"])
        self.log_dict({"loss/d": values["loss/d"], "loss/g": values["loss/g"]}, prog_bar=True, logger=False)

    def record(self, values: dict[str, float], sigma: float, lr_g: float, lr_d: float) -> None:
        """This iteration's scalars (read from the device once) to the logger, `last_logged`, and the
        divergence check; a stacked sweep (ganexp/stack.py) calls it for each member."""
        values = {**values, "noise/sigma": sigma, "lr/g": lr_g, "lr/d": lr_d}
        if self.logger is not None:
            self.logger.log_metrics(values, step=self.iteration)  # x-axis: iterations, not global_step
        self.last_logged = {"iteration": self.iteration, **values}
        if not (math.isfinite(values["loss/d"]) and math.isfinite(values["loss/g"])):
            self._diverge(self.iteration + 1, "non-finite loss")  # counted in completed iterations

    @torch.no_grad()
    def sample(self, z: Tensor) -> Tensor:
        """G(z) in eval mode (batch norm running stats, no dropout), as sample.py draws it."""
        generator = self.eval_generator
        was_training = generator.training
        generator.eval()
        try:
            return generator(z)
        finally:
            generator.train(was_training)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["iteration"] = self.iteration
        checkpoint["rng"] = {**rng_state(), "draws": self.draws.get_state()}  # a resumed run draws the same z, noise, dropout

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.iteration = int(checkpoint.get("iteration", 0))
        self._rng_to_restore = checkpoint.get("rng")

    def on_fit_start(self) -> None:
        if self.trainer.is_global_zero:  # known only now (DDP): rank 0 writes TensorBoard's custom-scalars layout
            write_layout(self.logger)

    def on_train_start(self) -> None:
        # Restored here, as late as possible: nothing between this and the first batch draws numbers.
        if getattr(self, "_rng_to_restore", None):
            set_rng_state(self._rng_to_restore)
            if "draws" in self._rng_to_restore:
                self.draws.set_state(self._rng_to_restore["draws"])
            self._rng_to_restore = None
        self.training_started = True

    def check_parameters(self) -> bool:
        """Whether every parameter is finite (one sync, only before a checkpoint is written); a run whose
        parameters are not is marked diverged here and stops."""
        finite = bool(torch.stack([p.detach().isfinite().all() for p in self.parameters()]).all())
        if not finite:
            self._diverge(self.iteration, "non-finite parameters")
        return finite

    def request_stop(self, signal_name: str) -> None:
        """A signal asked the run to stop (ganexp/signals.py): finish this iteration, checkpoint it, stop."""
        if self.interrupted is None:
            self.interrupted = signal_name
        if self._trainer is not None:
            self.trainer.should_stop = True

    def _diverge(self, iteration: int, what: str) -> None:
        """The one writer of `diverged_at` / `divergence`: the first cause found wins; training stops."""
        if self.diverged_at is None:
            self.diverged_at, self.divergence = iteration, f"{what} at iteration {iteration}"
        self.trainer.should_stop = True


def scalars(d_loss, g_loss, real_logits, fake_logits, d_norm, g_norm) -> dict[str, Tensor]:
    """The logged scalars of one iteration, as 0-d float tensors on the device (no sync yet)."""
    acc_real = (real_logits > 0).float().mean()
    acc_fake = (fake_logits < 0).float().mean()
    tensors = {
        "loss/d": d_loss, "loss/g": g_loss,
        "d/real_score": torch.sigmoid(real_logits).mean(), "d/fake_score": torch.sigmoid(fake_logits).mean(),
        "d/acc_real": acc_real, "d/acc_fake": acc_fake, "d/acc": (acc_real + acc_fake) / 2,
        "grad/d_norm": d_norm, "grad/g_norm": g_norm,
    }
    return {k: v.detach().float() for k, v in tensors.items()}


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
