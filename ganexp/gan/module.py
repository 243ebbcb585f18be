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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.func import vmap

from ganexp.callbacks.loggers import Loggers
from ganexp.models import eval_mode
from ganexp.gan.augment import DiffAugment
from ganexp.gan.losses import GANLoss, gradient_penalty, r1_penalty
from ganexp.gan.noise import InstanceNoise, LatentPrior, add_noise

# Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, and torch's optimizers make that check at every step(): with
# no GPU it costs ~80 µs a call (3-6 % of a stacked toy step), and there is no CUDA to keep uninitialized.
if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and torch.cuda.device_count() == 0:
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]
DRAW_SEED = 1 << 40  # training's draws: a stream of their own, apart from the fixed batch's and the data order's


@dataclass
class Run:
    """What a callback needs of the run it serves (`pl_module.run`), never read from the trainer: a plain run's
    come from its trainer, a stack member (ganexp/gan/stack.py) has its own while sharing the stack's trainer."""

    out: Path
    logger: Loggers | None  # every logger of the run as one (ganexp/callbacks/loggers.py); None: logger=none
    data: Any
    callbacks: list
    save_checkpoint: Callable[..., None]


class Single:
    """A plain run's network as a stack of one member: [1, N, ...] in and out (as stacked_nets.Stacked)."""

    joint = False  # D scores real and fake in passes of their own (batch norm's statistics stay per batch)

    def __init__(self, net: nn.Module):
        self.net = net

    def __call__(self, x: Tensor) -> Tensor:
        return self.net(x[0]).unsqueeze(0)

    def train(self, on: bool) -> None:
        """Gradients for this network in this phase (D's step or G's), or none."""
        for p in self.net.parameters():
            p.requires_grad_(on)

    def zero_grad(self) -> None:
        for p in self.net.parameters():
            p.grad = None

    def grad_norms(self) -> Tensor:
        return torch.nn.utils.get_total_norm([p.grad for p in self.net.parameters() if p.grad is not None]).view(1)


class GANModule(pl.LightningModule):
    """One run, or (ganexp/gan/stack.py's StackedGAN) M runs at once: `training_step` is written over a member
    dimension, every batch and draw [M, N, ...], every per-member number (σ, smoothing, penalty weights) an
    [M] vector; a plain run is M = 1 (`members` is [self]) with its own plain networks."""

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
        augment: DiffAugment | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        # The resolved config as a plain dict: weights_only-loadable; sample.py rebuilds the generator from it.
        self.save_hyperparameters(config or {}, logger=False)
        self.generator, self.discriminator = generator, discriminator
        self.loss, self.prior, self.instance_noise = loss, prior, instance_noise
        self.augment = augment or DiffAugment()  # DiffAugment before D (augment=none: nothing drawn, x as it is)
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d
        self.d_steps, self.log_every = int(d_steps), int(log_every)
        # reuse_fake: G's step scores the last D step's fake batch (one G forward per iteration) instead of a fresh one
        self.reuse_fake = bool(reuse_fake)
        # EMA of G's weights (Yazıcı et al. 2019): what is scored, sampled and exported; training uses the raw G.
        self.ema_decay, self.ema_start = float(ema_decay), int(ema_start)
        self.generator_ema = copy.deepcopy(generator).requires_grad_(False) if self.ema_decay > 0 else None
        # A fixed latent batch, so image grids show the same z over training.
        self.register_buffer("fixed_z", prior.sample(n_fixed, generator=torch.Generator().manual_seed(seed)))
        # Training's z, noise and penalty draws come from the run's own generator (saved in checkpoints): a stack
        # member draws exactly what its separate run draws. Dropout masks come from torch's global RNG.
        self.draw_seed = DRAW_SEED + int(seed)
        self._draws: torch.Generator | None = None
        self._start()

    def _start(self) -> None:
        """The state of a run (or a stack) before training: counters, outcome, the step's reused tensors."""
        self.iteration = 0  # completed iterations; saved in checkpoints
        self.diverged_at: int | None = None  # set by _diverge only: the iteration NaN/Inf was found at
        self.divergence: str | None = None  # ...and why, e.g. "non-finite loss at iteration 12"
        self.interrupted: str | None = None  # set by request_stop only: the signal that asked to stop
        self.stopped = False  # diverged or asked to stop: a member of a stack is then frozen, a run stops
        self.stop_asked_at = 0  # the iteration count when a signal asked to stop (request_stop)
        self.training_started = False  # True from on_train_start: before it, a signal stops at once (signals.py)
        self.last_logged: dict[str, float] = {}  # the last logged scalars, with their "iteration"
        self.running = [True]  # per member: False once it stopped (StackedGAN: it is frozen)
        self.buffers: dict[str, Tensor] = {}  # the members' z and noise, drawn in place each step (_buffer)
        self.vectors: dict[str, tuple[list[float], Tensor]] = {}  # per-member numbers as [M] tensors (_vector)
        self.stack = None  # the StackedGAN training this run as a member, if any (set by it, not a submodule)
        self._run: Run | None = None  # a stack member's own Run

    # ------------------------------------------------------------------------------------ the members
    @property
    def members(self) -> list["GANModule"]:
        """The runs this module trains: itself (StackedGAN: its M members)."""
        return [self]

    @property
    def run(self) -> Run:
        """This run's folder, logger, data, callbacks and checkpoint writer (callbacks read them here)."""
        if self._run is not None:
            return self._run
        trainer = self.trainer
        return Run(Path(trainer.default_root_dir), Loggers.of(trainer.loggers), trainer.datamodule, trainer.callbacks,
                   trainer.save_checkpoint)

    def optimizers(self, use_pl_optimizer: bool = True):
        """A stack member's own two optimizers (rebuilt, with its state: ganexp/gan/stack.py); else Lightning's."""
        if self.stack is not None:
            return self.stack.member_optimizers(self)
        return super().optimizers(use_pl_optimizer)

    def configure_optimizers(self):
        self.G, self.D = Single(self.generator), Single(self.discriminator)
        return [self.optimizer_g(self.generator.parameters()), self.optimizer_d(self.discriminator.parameters())]

    def step(self, optimizer, side: str) -> None:
        """One optimizer step of `side` ("g" or "d"); StackedGAN gives each member its own lr."""
        optimizer.step()

    def learning_rates(self, k: int) -> tuple[float, float]:
        """Member k's (G's, D's) learning rate now."""
        opt_g, opt_d = super().optimizers()
        return opt_g.param_groups[0]["lr"], opt_d.param_groups[0]["lr"]

    # ------------------------------------------------------------------------------- the training step
    def forward(self, z: Tensor) -> Tensor:
        return self.generator(z)

    def training_step(self, real: Tensor, batch_idx: int) -> None:
        opt_g, opt_d = super().optimizers()
        real = self.per_member(real)  # [M, N, ...]
        sigmas = [m.sigma() for m in self.members]
        log_now = self.iteration % self.log_every == 0
        n = real.shape[1]
        fake = None

        for step in range(self.d_steps):  # k discriminator updates (Goodfellow et al. 2014, Alg. 1)
            # with reuse_fake the last D step's fake batch keeps G's graph, and G's step scores it again
            keep = self.reuse_fake and step == self.d_steps - 1
            self.G.train(keep), self.D.train(True), self.D.zero_grad()
            fake = self.G(self.draw_z(n)) if keep else None
            d_loss, d_each, real_logits, fake_logits = self.discriminator_loss(real, sigmas, fake, log_now)
            self.manual_backward(d_loss)  # Σ_k loss_k: member k's gradient is that of its own loss
            d_norm = self.D.grad_norms() if log_now else None
            self.step(opt_d, "d")

        self.D.train(False), self.G.train(True), self.G.zero_grad()
        fake = self.G(self.draw_z(n)) if fake is None else fake
        seen = self.noised(self.augmented(fake, (n,)), sigmas, "noise/g", (n,))
        g_loss, g_each = self.losses(self.loss._pair.g, (self.D(seen),), (), log_now)
        self.manual_backward(g_loss)
        g_norm = self.G.grad_norms() if log_now else None
        self.step(opt_g, "g")
        self.D.train(True)  # outside the step every parameter takes gradients (figures step copies of G)
        for m, running in zip(self.members, self.running):
            if running and m.generator_ema is not None:
                m.update_ema()

        if log_now:  # the only host-device sync: once every log_every iterations
            self._log(d_each, g_each, real_logits, fake_logits, d_norm, g_norm, sigmas)
        self.iteration += 1
        for m, running in zip(self.members, self.running):
            if m is not self:
                m.iteration += int(running)

    def per_member(self, batch: Tensor) -> Tensor:
        """The batch as [M, N, ...]: a plain run's [N, ...] is one member's."""
        return batch.unsqueeze(0)

    def discriminator_loss(self, real: Tensor, sigmas: list[float], fake: Tensor | None = None, each: bool = False):
        """(Σ_k of the members' D losses, each member's loss [M] when `each`, D(real) and D(fake) logits) on a
        detached fake batch (`fake`, or a fresh one), both augmented, then noised; with the gradient penalty and
        R1, γ/2·E‖∇D‖², on the augmented images D sees, R1 lazily every `r1_every` iterations and then scaled by
        it (StyleGAN2)."""
        n = real.shape[1]
        if fake is None:
            with torch.no_grad():
                fake = self.G(self.draw_z(n))
        fake = fake.detach()
        parts = (n, fake.shape[1])
        if self.D.joint:  # row-wise D (stacked MLPs): one pass for both; each member augments real, then fake
            both = self.augmented(torch.cat([real, fake], dim=1), parts)  # ...then noises real, then fake
            real, fake = both.split(parts, dim=1)
            real_logits, fake_logits = self.D(self.noised(both, sigmas, "noise/d", parts)).split(parts, dim=1)
        else:
            real, fake = self.augmented(real, parts[:1]), self.augmented(fake, parts[1:])
            real_logits = self.D(self.noised(real, sigmas, "noise/real", (n,)))
            fake_logits = self.D(self.noised(fake, sigmas, "noise/fake", (fake.shape[1],)))
        losses = [m.loss for m in self.members]
        targets = (self.vector("smoothing", [loss.label_smoothing for loss in losses]),) \
            if self.loss._pair.has_targets else ()
        total, loss = self.losses(self.loss._pair.d, (real_logits, fake_logits), targets, each)
        gp_weights = [loss.gp_weight for loss in losses]
        r1_weights = [loss.r1_gamma / 2 * loss.r1_every for loss in losses]
        penalties = []
        if any(gp_weights):  # α drawn only for the members that use it, as their runs do
            shape = (n,) + (1,) * (real.dim() - 2)
            alpha = torch.stack([torch.rand(shape, device=real.device, dtype=real.dtype, generator=m.draws) if w
                                 else torch.zeros(shape, device=real.device, dtype=real.dtype)
                                 for m, w in zip(self.members, gp_weights)])
            penalties.append(self.vector("gp", gp_weights) * gradient_penalty(self.D, real, fake, alpha))
        if any(r1_weights) and self.iteration % self.loss.r1_every == 0:
            penalties.append(self.vector("r1", r1_weights) * r1_penalty(self.D, real))
        for penalty in penalties:
            total = total + penalty.sum()
            loss = None if loss is None else loss + penalty.detach()
        return total, loss, real_logits, fake_logits

    def losses(self, fn, logits: tuple[Tensor, ...], per_member: tuple[Tensor, ...], each: bool):
        """Σ_k fn(member k's logits, its values of `per_member`) in fp32, and each member's value [M] when `each`.
        A LossPair.sample_mean loss is one call on all members' logits (M·mean over M·N = Σ_k mean over N); any
        other runs per member (vmap)."""
        logits = tuple(t.float() for t in logits)
        if not self.loss._pair.sample_mean:
            values = vmap(fn)(*logits, *per_member)
            return values.sum(), values
        members = len(logits[0])
        shape = (-1,) + (1,) * (logits[0].dim() - 1)
        total = fn(*logits, *(v.view(shape) for v in per_member))
        if members > 1:
            total = members * total
        if not each:
            return total, None
        if members == 1:
            return total, total.detach().view(1)
        with torch.no_grad():  # only for the logged scalars
            return total, vmap(fn)(*(t.detach() for t in logits), *per_member)

    def draw_z(self, n: int) -> Tensor:
        """The members' z [M, n, latent], each from its own draws, into one reused buffer."""
        z = self._buffer("z", (len(self.members), n, self.prior.latent_dim))
        for k, m in enumerate(self.members):
            m.prior.sample(n, generator=m.draws, out=z[k])
        return z

    def augmented(self, x: Tensor, parts: tuple[int, ...]) -> Tensor:
        """DiffAugment per member: x_k [N, C, H, W] augmented with numbers drawn from member k's draws for each of
        `parts` (as `noised`); x itself, nothing drawn, with augment=none."""
        if not self.augment:
            return x
        drawn = self.augment.draw([m.draws for m in self.members], parts, x.device)
        return self.augment(x.flatten(0, 1), drawn).view_as(x)

    def noised(self, x: Tensor, sigmas: list[float], name: str, parts: tuple[int, ...]) -> Tensor:
        """Instance noise per member: x_k + σ_k·ε_k, ε_k drawn from member k's draws for each of `parts` (row
        counts of x_k, in the order its run noises them); a member with σ_k = 0 draws nothing."""
        if not any(s > 0 for s in sigmas):
            return x
        eps = self._buffer(name, x.shape, x.dtype)
        for k, (m, s) in enumerate(zip(self.members, sigmas)):
            if s > 0:
                for rows in eps[k].split(parts):
                    rows.normal_(generator=m.draws)
        return x + self.vector("sigma", sigmas).view(-1, *([1] * (x.dim() - 1))) * eps

    def vector(self, name: str, values: list[float]) -> Tensor:
        """`values` (one per member) as an [M] float tensor on the device, made again only when they change."""
        kept = self.vectors.get(name)
        if kept is None or kept[0] != values or kept[1].device != self.device:
            kept = self.vectors[name] = (list(values), torch.tensor(values, dtype=torch.float32, device=self.device))
        return kept[1]

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """A zeroed tensor the members' draws are written into, kept between steps of one shape."""
        buffer = self.buffers.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype or buffer.device != self.device:
            buffer = self.buffers[name] = torch.zeros(shape, device=self.device, dtype=dtype)
        return buffer

    def _log(self, d_loss, g_loss, real_logits, fake_logits, d_norm, g_norm, sigmas) -> None:
        tensors = scalars(d_loss, g_loss, real_logits, fake_logits, d_norm, g_norm)
        rows = torch.stack(list(tensors.values()), dim=1).tolist()  # one host sync for every member's scalars
        for k, (m, running) in enumerate(zip(self.members, self.running)):
            if running:
                m.record(dict(zip(tensors, rows[k])), sigmas[k], *self.learning_rates(k))
        self.log_dict({"loss/d": rows[0][0], "loss/g": rows[0][1]}, prog_bar=True, logger=False)

    def record(self, values: dict[str, float], sigma: float, lr_g: float, lr_d: float) -> None:
        """This iteration's scalars to the run's logger, `last_logged`, and the divergence check."""
        values = {**values, "noise/sigma": sigma, "lr/g": lr_g, "lr/d": lr_d}
        if self.run.logger is not None:
            self.run.logger.log_metrics(values, step=self.iteration)  # x-axis: iterations, not global_step
        self.last_logged = {"iteration": self.iteration, **values}
        if not (math.isfinite(values["loss/d"]) and math.isfinite(values["loss/g"])):
            self._diverge(self.iteration + 1, "non-finite loss")  # counted in completed iterations

    # ------------------------------------------------------------------------------ what the run reads
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
        """ema ← decay·ema + (1 - decay)·G after each G step (a copy up to iteration `ema_start`); buffers copied."""
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
        if self.instance_noise.per_iteration and self.attached and self.trainer.num_training_batches:
            epochs = self.iteration / max(int(self.trainer.num_training_batches), 1)
        return self.instance_noise.sigma(epochs)

    def generator_loss(self, z: Tensor, generator: nn.Module) -> Tensor:
        """G's loss on generator(z) as D sees it, noise from torch's RNG (the feature-space figure's G step: toy
        data, which is never augmented)."""
        fake = self.per_member(generator(z))
        return self.losses(self.loss._pair.g, (self.discriminator(add_noise(fake[0], self.sigma())).unsqueeze(0),),
                           (), False)[0]

    @torch.no_grad()
    def sample(self, z: Tensor) -> Tensor:
        """G(z) in eval mode (batch norm running stats, no dropout), as sample.py draws it."""
        with eval_mode(self.eval_generator) as generator:
            return generator(z)

    # ------------------------------------------------------------------------------------ the lifecycle
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["iteration"] = self.iteration
        checkpoint["rng"] = {**rng_state(), "draws": self.draws.get_state()}  # a resumed run draws the same z, noise, dropout

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.iteration = int(checkpoint.get("iteration", 0))
        self._rng_to_restore = checkpoint.get("rng")

    def on_train_start(self) -> None:
        # Restored here, as late as possible: nothing between this and the first batch draws numbers.
        if getattr(self, "_rng_to_restore", None):
            set_rng_state(self._rng_to_restore)
            if "draws" in self._rng_to_restore:
                self.draws.set_state(self._rng_to_restore["draws"])
            self._rng_to_restore = None
        self.training_started = True

    def check_parameters(self) -> bool:
        """Whether every parameter is finite (one sync, before a checkpoint is written); else the run diverged."""
        finite = bool(torch.stack([p.detach().isfinite().all() for p in self.parameters()]).all())
        if not finite:
            self._diverge(self.iteration, "non-finite parameters")
        return finite

    def request_stop(self, signal_name: str) -> None:
        """A signal asked the run to stop (ganexp/run/signals.py): finish this iteration, checkpoint it, stop. The
        trainer is stopped at the end of an iteration, once the checkpoint callback has saved it (or, without one,
        after the next), never between two: Lightning would end its epoch there, and a resume from the checkpoint
        written then would skip the rest of that epoch."""
        if self.interrupted is None:
            self.interrupted, self.stop_asked_at = signal_name, self.iteration
        self.stopped = True  # a stack member is frozen at once (the stack stops once none runs)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.interrupted is not None and self.iteration > self.stop_asked_at and self.attached:
            self.trainer.should_stop = True

    def _diverge(self, iteration: int, what: str) -> None:
        """The one writer of `diverged_at` / `divergence`: the first cause found wins; training stops."""
        if self.diverged_at is None:
            self.diverged_at, self.divergence = iteration, f"{what} at iteration {iteration}"
        self._stop()

    @property
    def attached(self) -> bool:
        """Whether a Trainer runs this module (Lightning's `trainer` raises RuntimeError outside one)."""
        try:
            return self.trainer is not None
        except RuntimeError:
            return False

    def _stop(self) -> None:
        """This run stops: a plain run's trainer stops; a stack member is frozen, the others go on."""
        self.stopped = True
        if self.stack is None and self.attached:
            self.trainer.should_stop = True


def scalars(d_loss, g_loss, real_logits, fake_logits, d_norm, g_norm) -> dict[str, Tensor]:
    """The logged scalars of one iteration, each an [M] float tensor on the device (no sync yet)."""
    real, fake = real_logits.detach().float().flatten(1), fake_logits.detach().float().flatten(1)
    acc_real = (real > 0).float().mean(1)
    acc_fake = (fake < 0).float().mean(1)
    tensors = {
        "loss/d": d_loss, "loss/g": g_loss,
        "d/real_score": torch.sigmoid(real).mean(1), "d/fake_score": torch.sigmoid(fake).mean(1),
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

