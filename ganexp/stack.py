"""Stacked sweeps: a sweep's jobs that differ only in stackable settings, trained as one model.

`hydra/launcher=stacked` (hydra_plugins/ganexp_stacked) groups a sweep's jobs by everything but the
STACKABLE keys and hands each group of two or more to `train_stack`. Every member stays a real run: its
own GANModule (seeded and built as its separate run builds it), datamodule, callbacks, logger, run folder,
metrics.json and checkpoints. Only the arithmetic is shared: each network runs once for all members (the
members' rows side by side in one batch, each Linear layer one torch.baddbmm with the stacked weights:
StackedLinear, measured faster than torch.func.vmap over F.linear at these sizes, see BENCHMARKS.md), and
one stock optimizer steps the stacked weights at lr = 1, each member then taking its own lr (the stock
updates are linear in lr). A member draws z and noise from its own generator (GANModule.draws) and its
batches in its own order, so it computes what its separate run computes, up to float rounding. A member that
diverges is frozen (its parameters get no more updates) while the others go on. `trainer.max_time` is the stack's:
all members train that long together.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn
from torch.func import vmap
from torch.utils.data import DataLoader, Dataset, Sampler

from ganexp import writes
from ganexp.data.base import EpochBatchSampler
from ganexp.module import scalars

log = logging.getLogger("ganexp")

# What may differ inside one stack: per-member numbers the stacked step takes as vectors (lr per parameter
# group, smoothing / σ / penalty weights per member, seeds through each member's own draws and data order).
STACKABLE = ("optimizer.lr", "optimizer.g.lr", "optimizer.d.lr", "loss.label_smoothing", "loss.gp_weight",
             "loss.r1_gamma", "noise.instance_sigma", "noise.instance_sigma_min", "noise.anneal",
             "noise.anneal_epochs", "noise.anneal_per", "seed", "data.seed")
PRECISIONS = ("32-true", "32", 32)


# ----------------------------------------------------------------------------------------------- grouping
def _settings(cfg: DictConfig) -> dict:
    """A job's resolved settings with its own folder written as "<run>" (paths derived from it compare equal)."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.pop("hydra", None)
        cfg.paths.output_dir = "<run>"
    return OmegaConf.to_container(cfg, resolve=True)


def group_key(cfg: DictConfig) -> str:
    """Jobs with equal keys can share a stack: everything but the STACKABLE keys is equal."""
    settings = _settings(cfg)
    for dotted in STACKABLE:
        *parents, last = dotted.split(".")
        node = settings
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return json.dumps(settings, sort_keys=True, default=str)


def why_alone(cfg: DictConfig) -> str | None:
    """Why this job cannot be a stack member (it then runs as a separate run), or None."""
    from ganexp.build import build_parts
    from ganexp.registry import _resolve, kind_of

    settings = _settings(cfg)
    trainer = settings.get("trainer") or {}
    if settings.get("ckpt_path") or settings.get("init_from"):
        return "it starts from a checkpoint (ckpt_path / init_from)"
    if settings.get("reuse_fake"):
        return "reuse_fake=true (the stacked step draws a fresh fake batch for G)"
    if trainer.get("devices") not in (1, "1", [0]) or trainer.get("num_nodes", 1) != 1 or \
            trainer.get("strategy", "auto") not in ("auto", None):
        return "it runs on several devices (trainer.devices / strategy)"
    if trainer.get("precision") not in PRECISIONS:
        return f"trainer.precision={trainer.get('precision')} (stacks train in 32-bit)"
    for name, callback in (settings.get("callbacks") or {}).items():
        target = (callback or {}).get("_target_")
        if kind_of(target) and not getattr(_resolve(target), "stackable", True):
            return f"callbacks.{name} ({target.rsplit('.', 1)[-1]}) needs a run of its own"
    with torch.device("meta"):
        parts = build_parts({k: settings[k] for k in ("model", "data", "loss", "optimizer", "noise")})
    for side in ("generator", "discriminator"):
        problem = stack_problem(parts[side])
        if problem:
            return f"model.{side}: {problem}"
    return None


def plan(keys: list[str | None], max_stack: int) -> list[list[int]]:
    """Jobs (by index) in groups: equal keys together, at most `max_stack` per group, in sweep order;
    a None key (a job that runs alone) is a group of its own."""
    groups: dict[str, list[list[int]]] = {}
    order: list[list[int]] = []
    for i, key in enumerate(keys):
        if key is None:
            order.append([i])
            continue
        runs = groups.setdefault(key, [])
        if not runs or len(runs[-1]) >= max_stack:
            runs.append([])
            order.append(runs[-1])
        runs[-1].append(i)
    return order


# ---------------------------------------------------------------------------------------------- the model
# Modules a stack can run with every member's samples in one batch: they treat each sample on its own.
ROW_WISE = (nn.Linear, nn.LeakyReLU, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout, nn.Flatten,
            nn.Sequential)


def stack_problem(net: nn.Module) -> str | None:
    """Why `net` cannot run stacked, or None: its class must say that its forward treats each sample on its
    own (`stackable = True`, as the MLPs do), every layer must be ROW_WISE, and it may keep no buffers."""
    if not getattr(type(net), "stackable", False):
        return f"{type(net).__name__} does not declare a forward that treats each sample on its own (stackable = True)"
    if any(True for _ in net.buffers()):
        return "it keeps buffers (batch norm or spectral norm), which stacked layers cannot hold"
    for module in net.modules():
        if module is not net and not isinstance(module, ROW_WISE):
            return f"it has {type(module).__name__} layers"
    return None


class StackedLinear(nn.Module):
    """The members' Linear layers at one position as one layer: the members' rows of the batch side by side
    ([M·N, in] → [M, N, in]), one batched matmul (torch.baddbmm) with the stacked weight [M, out, in]."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.__dict__["weight"], self.__dict__["bias"] = weight, bias  # Stacked's leaves, not registered here

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(self.weight.shape[0], -1, x.shape[-1])
        weight = self.weight.transpose(1, 2)  # [M, in, out]
        y = torch.bmm(x, weight) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), x, weight)
        return y.reshape(-1, y.shape[-1])


class Stacked:
    """M networks of one architecture run as one: a copy of the first network whose Linear layers are
    StackedLinear, fed the members' batches one after another ([M, N, ...] → [M·N, ...]); the networks' own
    forward runs unchanged (it treats samples on their own: stack_problem).

    All weights live in one flat tensor (`flat`, the optimizer's one parameter) and all gradients in another
    (`flat.grad`). Each parameter position is a leaf [M, ...] viewing its slice of `flat`, its `.grad` a view
    of the same slice of the gradient, so backward accumulates straight into the flat gradient and the
    optimizer, the members' lr and the freezing of diverged members are a few whole-tensor ops per step, not
    a few per layer. Every member's parameter is a view of its row of a leaf: the members' modules stay plain
    modules whose weights are always the stack's (callbacks, EMA, checkpoints read them as usual).
    `bind()` runs on the training device (moving a module copies its parameters, which would break the views)."""

    def __init__(self, nets: list[nn.Module]):
        self.nets, self.members = nets, len(nets)
        self.names = [name for name, _ in nets[0].named_parameters()]
        self.leaves: dict[str, Tensor] = {}
        self.spans: dict[str, tuple[int, int]] = {}  # name → its leaf's [start, end) in `flat`
        self.flat: Tensor | None = None
        self.net: nn.Module | None = None

    def bind(self) -> None:
        owners = {name: [(net.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]) for net in self.nets]
                  for name in self.names}
        stacked = {name: torch.stack([getattr(m, attr).detach() for m, attr in pairs]) for name, pairs in owners.items()}
        self.flat = torch.cat([t.reshape(-1) for t in stacked.values()]).requires_grad_(True)
        self.flat.grad = torch.zeros_like(self.flat)
        start = 0
        for name, pairs in owners.items():
            shape, end = stacked[name].shape, start + stacked[name].numel()
            leaf = self.flat.detach()[start:end].view(shape).requires_grad_(True)
            leaf.grad = self.flat.grad[start:end].view(shape)  # backward adds into it, in place
            for k, (module, attr) in enumerate(pairs):
                module._parameters[attr] = nn.Parameter(leaf.data[k], requires_grad=True)  # a view of row k
            self.leaves[name], self.spans[name], start = leaf, (start, end), end
        self.net = copy.deepcopy(self.nets[0])
        for name, module in self.nets[0].named_modules():
            if isinstance(module, nn.Linear):
                parent, _, attr = name.rpartition(".")
                bias = self.leaves.get(f"{name}.bias")
                setattr(self.net.get_submodule(parent), attr, StackedLinear(self.leaves[f"{name}.weight"], bias))
        for param in list(self.net.parameters()):  # none left but those of layers replaced above
            raise RuntimeError(f"a stacked copy kept a parameter of shape {tuple(param.shape)}")

    def per_member(self, values: Tensor) -> Tensor:
        """A per-member vector [M] spread over `flat`'s elements: each member's value at its rows of every leaf."""
        return torch.cat([values.repeat_interleave(leaf[0].numel()) for leaf in self.leaves.values()])

    def train(self, on: bool) -> None:
        """Gradients for this network in this phase (D's step or G's), or none; a new phase starts from zero."""
        for leaf in self.leaves.values():
            leaf.requires_grad_(on)
        if on:
            self.flat.grad.zero_()

    def grad_norms(self) -> Tensor:
        """Each member's gradient norm over its parameters: [M]."""
        return torch.stack([leaf.grad.flatten(1).square().sum(1) for leaf in self.leaves.values()]).sum(0).sqrt()

    def __call__(self, x: Tensor) -> Tensor:
        y = self.net(x.reshape(-1, *x.shape[2:]))
        return y.reshape(self.members, -1, *y.shape[1:])


class StackedGAN(pl.LightningModule):
    """GANModule.training_step for M members at once (same order of updates and of draws per member)."""

    def __init__(self, members: list["Member"]):
        super().__init__()
        self.automatic_optimization = False
        self.members = members  # a plain list: each member module's trainer is its MemberTrainer
        mods = [m.module for m in members]
        self.nets = nn.ModuleList(nn.ModuleList([m.generator, m.discriminator]) for m in mods)  # moved with the stack
        self.g, self.d = Stacked([m.generator for m in mods]), Stacked([m.discriminator for m in mods])
        first = mods[0]
        self.d_steps, self.log_every, self.pair = first.d_steps, first.log_every, first.loss._pair
        self.r1_every = first.loss.r1_every
        self.iteration = 0
        self.running = [True] * len(members)  # False once a member diverged or was asked to stop: frozen
        self.keep: dict[str, tuple[tuple[bool, ...], Tensor]] = {}  # side → (`running`, its mask): _keep's
        self.owned: dict[tuple[str, int], dict] = {}  # (side, member) → its optimizer's hyperparameters
        self.lrs: dict[str, Tensor] = {}  # side → the members' learning rates
        self.mods = mods
        self.buffers: dict[str, Tensor] = {}  # the members' z and noise, drawn in place each step (_buffer)
        self.sigma_vector: tuple[list[float] | None, Tensor | None] = (None, None)  # the last σs, as an [M] tensor
        self.interrupted: str | None = None  # set by request_stop (ganexp/signals.py reads it)
        self.training_started = False  # True from on_train_start: before it, a signal stops at once
        # The members' fixed loss weights, as [M] vectors (on the training device in on_fit_start)
        losses = [mod.loss for mod in mods]
        self.gp_weights = [loss.gp_weight for loss in losses]
        self.r1_weights = [loss.r1_gamma / 2 * loss.r1_every for loss in losses]
        self.weights = {"smoothing": [loss.label_smoothing for loss in losses], "gp": self.gp_weights,
                        "r1": self.r1_weights}

    def _vector(self, values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    def configure_optimizers(self):
        self.g.bind()  # on the training device now; the members' parameters become views of the stack's weights
        self.d.bind()
        return [self._optimizer("g"), self._optimizer("d")]

    def _optimizer(self, side: str) -> torch.optim.Optimizer:
        """One stock optimizer over the stacked weights (`flat`) with lr = 1; `_step` gives each member its own lr.
        Only lr differs inside a stack (betas, momentum, decay are grouping keys), and the stock updates
        (Adam, RMSProp, SGD with momentum, weight decay included) are linear in lr while their state is not
        touched by it: one step at lr = 1, then p = p_old + lr_k·(p_step - p_old) for member k."""
        lrs = []
        for k, mod in enumerate(self.mods):
            net, factory = (mod.generator, mod.optimizer_g) if side == "g" else (mod.discriminator, mod.optimizer_d)
            own = {key: v for key, v in factory(net.parameters()).param_groups[0].items() if key != "params"}
            self.owned[side, k] = own  # what its separate run's optimizer holds
            lrs.append(float(own["lr"]))
        stacked = self.g if side == "g" else self.d
        self.lrs[side] = stacked.per_member(torch.tensor(lrs, device=self.device))  # each element's member's lr
        factory = self.mods[0].optimizer_g if side == "g" else self.mods[0].optimizer_d
        return factory([{"params": [stacked.flat], "lr": 1.0}])

    def on_fit_start(self) -> None:
        for mod in self.mods:
            mod.to(self.device)
        self.weights = {name: self._vector(values) for name, values in self.weights.items()}  # once, not per step

    def on_train_start(self) -> None:
        self.training_started = True

    def training_step(self, real: Tensor, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        sigmas = [mod.sigma() for mod in self.mods]
        log_now = self.iteration % self.log_every == 0
        n = real.shape[1]

        for _ in range(self.d_steps):
            self.d.train(True), self.g.train(False)
            d_total, d_loss, real_logits, fake_logits = self.discriminator_loss(real, sigmas, n, log_now)
            self.manual_backward(d_total)  # Σ_k loss_k: member k's gradient is that of its own loss
            d_norm = self.d.grad_norms() if log_now else None
            self._step(opt_d, "d")

        self.g.train(True), self.d.train(False)
        fake = self.g(self._draw_z(n))
        g_total, g_loss = self._losses(self.pair.g, (self.d(self._noised(fake, sigmas, "noise/g", (n,))).float(),),
                                       (), log_now)
        self.manual_backward(g_total)
        g_norm = self.g.grad_norms() if log_now else None
        self._step(opt_g, "g")
        self.g.train(False)
        for mod, running in zip(self.mods, self.running):
            if running and mod.generator_ema is not None:
                mod.update_ema()

        if log_now:  # one host sync for every member's scalars
            self._log(d_loss, g_loss, real_logits, fake_logits, d_norm, g_norm, sigmas)
        self.iteration += 1
        for mod, running in zip(self.mods, self.running):
            mod.iteration += int(running)

    def discriminator_loss(self, real: Tensor, sigmas: list[float], n: int, each: bool):
        """Σ_k of the members' D losses, each member's loss [M] when `each` (else None), and the logits."""
        with torch.no_grad():
            fake = self.g(self._draw_z(n))
        parts = (real.shape[1], n)  # each member noises its real batch, then its fake one, as its run does
        noised = self._noised(torch.cat([real, fake], dim=1), sigmas, "noise/d", parts)
        real_logits, fake_logits = self.d(noised).split(parts, dim=1)  # one pass of D for both
        targets = (self.weights["smoothing"],) if self.pair.has_targets else ()
        total, loss = self._losses(self.pair.d, (real_logits.float(), fake_logits.float()), targets, each)
        penalties = []
        if any(self.gp_weights):
            penalties.append(self.weights["gp"] * self._gradient_penalty(real, fake, self.gp_weights))
        if any(self.r1_weights) and self.iteration % self.r1_every == 0:
            penalties.append(self.weights["r1"] * self._r1(real))
        for penalty in penalties:
            total = total + penalty.sum()
            loss = None if loss is None else loss + penalty.detach()
        return total, loss, real_logits, fake_logits

    def _losses(self, fn, logits: tuple[Tensor, ...], per_member: tuple[Tensor, ...], each: bool):
        """Σ_k fn(member k's logits, its values of `per_member`), and each member's value [M] when `each`.
        A loss that is a mean over samples (LossPair.sample_mean: the built-in ones) is one call on all members'
        logits, M·(mean over the M·N samples) = Σ_k (mean over member k's N), with the members' values
        broadcast over their rows; any other loss runs per member (vmap)."""
        if not self.pair.sample_mean:
            values = vmap(fn)(*logits, *per_member)
            return values.sum(), values
        shape = (-1,) + (1,) * (logits[0].dim() - 1)
        total = len(self.mods) * fn(*logits, *(v.view(shape) for v in per_member))
        if not each:
            return total, None
        with torch.no_grad():  # only for the logged scalars
            return total, vmap(fn)(*(t.detach() for t in logits), *per_member)

    def _gradient_penalty(self, real: Tensor, fake: Tensor, weights: list[float]) -> Tensor:
        """losses.gradient_penalty per member; α drawn only for members that use it (as their runs do)."""
        shape = (real.shape[1],) + (1,) * (real.dim() - 2)
        alpha = torch.stack([torch.rand(shape, device=self.device, dtype=real.dtype, generator=mod.draws) if w
                             else torch.zeros(shape, device=self.device, dtype=real.dtype)
                             for mod, w in zip(self.mods, weights)])
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.d(mixed).sum(), mixed, create_graph=True)
        return (grad.flatten(2).norm(dim=2) - 1.0).square().mean(dim=1)

    def _r1(self, real: Tensor) -> Tensor:
        x = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.d(x).sum(), x, create_graph=True)
        return grad.flatten(2).square().sum(dim=2).mean(dim=1)

    def _draw_z(self, n: int) -> Tensor:
        """The members' z [M, n, latent], each from its own draws, into one reused buffer (G's graph that saved
        the last z is gone by the next draw)."""
        z = self._buffer("z", (len(self.mods), n, self.mods[0].prior.latent_dim))
        for k, mod in enumerate(self.mods):
            mod.prior.sample(n, generator=mod.draws, out=z[k])
        return z

    def _noised(self, x: Tensor, sigmas: list[float], name: str, parts: tuple[int, ...]) -> Tensor:
        """noise.add_noise per member: x_k + σ_k·ε_k, with ε_k drawn from member k's draws for each of `parts`
        (row counts of x_k, in the order its separate run noises them). ε lives in a reused buffer whose rows of
        a member with σ_k = 0 are never drawn (they stay zero, or are multiplied by σ_k = 0)."""
        if not any(s > 0 for s in sigmas):
            return x
        eps = self._buffer(name, x.shape, x.dtype)
        for k, (mod, s) in enumerate(zip(self.mods, sigmas)):
            if s > 0:
                for rows in eps[k].split(parts):
                    rows.normal_(generator=mod.draws)
        if self.sigma_vector[0] != sigmas:  # σ changes once an epoch at most (anneal_per=iteration: every iteration)
            self.sigma_vector = sigmas, self._vector(sigmas)
        return x + self.sigma_vector[1].view(-1, *([1] * (x.dim() - 1))) * eps

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """A tensor the members' draws are written into, kept between steps (zeros when made; made again
        for a batch of another shape)."""
        buffer = self.buffers.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            buffer = self.buffers[name] = torch.zeros(shape, device=self.device, dtype=dtype)
        return buffer

    @torch.no_grad()
    def _step(self, optimizer, side: str) -> None:
        """The stock step at lr = 1, then each member's own lr: p_old + lr_k·(p_step - p_old). A frozen
        member's rows stay as they were."""
        stacked = self.g if side == "g" else self.d
        flat = stacked.flat
        before = flat.clone()
        optimizer.step()
        new = torch.lerp(before, flat, self.lrs[side])
        if not all(self.running):
            new = torch.where(self._keep(side), new, before)
        flat.copy_(new)

    def _keep(self, side: str) -> Tensor:
        """Which elements of `side`'s flat weights take the step: the running members' (built again only when
        `running` changes; one mask per side is kept, each as large as the side's weights)."""
        running = tuple(self.running)
        if self.keep.get(side, (None,))[0] != running:
            stacked = self.g if side == "g" else self.d
            self.keep[side] = running, stacked.per_member(torch.tensor(running, device=self.device))
        return self.keep[side][1]

    def _log(self, d_loss, g_loss, real_logits, fake_logits, d_norm, g_norm, sigmas) -> None:
        per_member = [scalars(d_loss[k], g_loss[k], real_logits[k], fake_logits[k], d_norm[k], g_norm[k])
                      for k in range(len(self.members))]
        names = list(per_member[0])
        rows = torch.stack([torch.stack(list(t.values())) for t in per_member]).tolist()
        for k, mod in enumerate(self.mods):
            if self.running[k]:
                mod.record(dict(zip(names, rows[k])), sigmas[k], self.owned["g", k]["lr"], self.owned["d", k]["lr"])

    def optimizer_states(self, k: int) -> list[dict]:
        """Member k's optimizer states, as its separate run's two optimizers would save them: row k of every
        per-parameter state tensor (step counters are shared), its own hyperparameters."""
        states = []
        for side, optimizer in zip("gd", self.trainer.optimizers):
            stacked = self.g if side == "g" else self.d
            state = optimizer.state_dict()["state"].get(0, {})  # its one parameter: `flat`
            rows = {i: {key: (v[slice(*stacked.spans[name])].view(leaf.shape)[k].clone()
                              if isinstance(v, Tensor) and v.shape == stacked.flat.shape
                              else v.clone() if isinstance(v, Tensor) else v) for key, v in state.items()}
                    for i, (name, leaf) in enumerate(stacked.leaves.items()) if state}
            states.append({"state": rows, "param_groups": [{**self.owned[side, k], "params": list(range(len(stacked.leaves)))}]})
        return states

    def request_stop(self, signal_name: str) -> None:
        """A signal (ganexp/signals.py): every member finishes this iteration, checkpoints it and stops."""
        self.interrupted = signal_name
        for mod in self.mods:
            mod.request_stop(signal_name)
        self.trainer.should_stop = True


# ----------------------------------------------------------------------------------------------- the data
class _Gather(Dataset):
    """Member k's batch from its own data: one tensor shared by all members, or one per member, stacked."""

    def __init__(self, data: Tensor, shared: bool):
        self.data, self.shared = data, shared

    def __len__(self) -> int:
        return self.data.shape[0 if self.shared else 1]

    def __getitem__(self, index: Tensor) -> Tensor:
        index = index.to(self.data.device, non_blocking=True)
        if self.shared:
            return self.data[index]
        return self.data[torch.arange(len(index), device=index.device)[:, None], index]


class _Samplers(Sampler[Tensor]):
    """The members' EpochBatchSamplers side by side: [M, batch] indices, each member in its own order."""

    def __init__(self, samplers: list[EpochBatchSampler]):
        self.samplers = samplers

    def set_epoch(self, epoch: int) -> None:
        for s in self.samplers:
            s.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.samplers[0])

    def __iter__(self):
        for batches in zip(*self.samplers):
            yield torch.stack(batches)


def share_data(data, distinct: list[Tensor]) -> None:
    """Point `data.train_data` at an equal tensor of `distinct` (the members before it) and let its own copy
    go; else add it there. Members that differ only in seed, lr, smoothing or σ mostly load the same data
    (MNIST's order comes from the seed, not its content; toy points come from `data.seed`)."""
    mine = data.train_data
    same = next((t for t in distinct if t is mine or (t.shape == mine.shape and torch.equal(t, mine))), None)
    if same is None:
        distinct.append(mine)
    else:
        data.train_data = same


class StackedData(pl.LightningDataModule):
    def __init__(self, members: list["Member"]):
        super().__init__()
        datas = [m.data for m in members]
        first = datas[0].train_data
        self.shared = all(d.train_data is first or torch.equal(d.train_data, first) for d in datas)
        if self.shared:
            for d in datas:
                d.train_data = first  # one copy in memory
        self.data = first if self.shared else torch.stack([d.train_data for d in datas])
        self.datas = datas

    def train_dataloader(self) -> DataLoader:
        device = self.trainer.strategy.root_device
        n = len(self.datas[0].train_data)
        samplers = [EpochBatchSampler(n, d.batch_size, d.seed) for d in self.datas]
        return DataLoader(_Gather(self.data.to(device), self.shared), sampler=_Samplers(samplers), batch_size=None,
                          generator=torch.Generator())


# -------------------------------------------------------------------------------------------- the members
class MemberTrainer:
    """What a member's callbacks and module see as their trainer: the stack's trainer (epoch, progress,
    budget, device) with the member's own logger, callbacks, data and folder, and its own `should_stop`."""

    def __init__(self, stack_trainer: pl.Trainer, member: "Member"):
        self._stack = stack_trainer
        self._member = member
        self.logger = member.logger
        self.loggers = [member.logger] if member.logger else []
        self.callbacks = member.callbacks
        self.datamodule = member.data
        self.default_root_dir = str(member.out)
        self.lightning_module = member.module
        self.should_stop = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stack, name)

    def save_checkpoint(self, path, weights_only: bool = False) -> None:
        if self._stack.is_global_zero:  # `path` is the checkpoint callback's temporary file (ganexp/writes.py)
            torch.save(self._member.checkpoint(self._stack), path)


class Member:
    """One job of a stack, built exactly as train._train builds a separate run."""

    def __init__(self, cfg: DictConfig, overrides: list[str] | None, index: int):
        from ganexp.build import build_callbacks, build_datamodule, build_logger, build_module, plain
        from ganexp.tensorboard import HParamsRow

        self.cfg, self.overrides, self.index = cfg, overrides, index
        self.out = Path(cfg.paths.output_dir)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)  # the same draws, in the same order, as train._train
        self.data = build_datamodule(cfg.data)
        self.data.setup("fit")
        self.module = build_module(cfg)
        config = plain(cfg)
        self.row = HParamsRow(overrides)
        self.callbacks = [*build_callbacks(config), self.row]
        self.logger = build_logger(config) or None
        self.trainer: MemberTrainer | None = None

    @property
    def running(self) -> bool:
        return self.trainer is None or not self.trainer.should_stop

    def checkpoint(self, stack_trainer: pl.Trainer) -> dict:
        """What Lightning's Trainer.save_checkpoint writes for a separate run (same keys; resume, sample,
        evaluate and export read it as one), with the stack's loop progress: it is this member's too."""
        stack = stack_trainer.lightning_module
        module = self.module
        checkpoint = {
            "epoch": stack_trainer.current_epoch, "global_step": stack_trainer.global_step,
            "pytorch-lightning_version": pl.__version__,
            "state_dict": {k: v.clone() for k, v in module.state_dict().items()},  # a view would save the whole stack
            "loops": stack_trainer._checkpoint_connector._get_loops_state_dict(),
            "callbacks": {cb.state_key: state for cb in self.callbacks if (state := cb.state_dict())},
            "optimizer_states": stack.optimizer_states(self.index), "lr_schedulers": [],
            "hparams_name": "kwargs", "hyper_parameters": copy.deepcopy(dict(module.hparams)),
        }
        data_state = self.data.state_dict()
        if data_state:
            checkpoint[type(self.data).__qualname__] = data_state
        module.on_save_checkpoint(checkpoint)
        return checkpoint


class Members(Callback):
    """The stack's one callback: each member's callbacks (and module hooks) called with its own trainer."""

    def __init__(self, members: list[Member]):
        self.members = members

    def _each(self, hook: str, *args: Any, members: list[Member] | None = None) -> None:
        for m in self.members if members is None else members:
            if hasattr(m.module, hook) and hook in ("on_fit_start", "on_train_start"):
                getattr(m.module, hook)()
            for cb in m.callbacks:
                getattr(cb, hook)(m.trainer, m.module, *args)

    def setup(self, trainer, pl_module, stage: str) -> None:
        for m in self.members:
            m.trainer = MemberTrainer(trainer, m)
            m.module.trainer = m.trainer
            m.data.trainer = m.trainer
        self._each("setup", stage)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._each("on_fit_start")

    def on_train_start(self, trainer, pl_module) -> None:
        self._each("on_train_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ran = [m for m, running in zip(self.members, pl_module.running) if running]
        self._score_together(ran, final=False)
        self._each("on_train_batch_end", None, None, batch_idx, members=ran)
        pl_module.running = [running and m.running for m, running in zip(self.members, pl_module.running)]
        if not any(pl_module.running):
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        self._score_together([m for m in self.members if m.module.diverged_at is None and m.module.interrupted is None],
                             final=True)
        self._each("on_train_end")

    @staticmethod
    def _score_together(members: list[Member], final: bool) -> None:
        """The evaluations due now (every `eval.every` iterations; `final`: the last one, on `n_final` samples),
        scored together: each member's samples from its own generator, all of them through the classifier in
        one call (Evaluator.score_many); each EvalCallback then takes its scores from its `ready`."""
        from ganexp.metrics.callback import EVAL_SEED, EvalCallback

        due: dict[tuple[int, int], list] = {}
        for m in members:
            for cb in m.callbacks:
                if isinstance(cb, EvalCallback) and cb.evaluator is not None:
                    if final or (cb.every > 0 and m.module.iteration % cb.every == 0):
                        due.setdefault((id(cb.evaluator), cb.n_final if final else cb.n), []).append((m, cb))
        for (_, n), pairs in due.items():
            samples = [cb.samples(m.module.eval_generator, m.module, n) for m, cb in pairs]
            for (m, cb), scores in zip(pairs, pairs[0][1].evaluator.score_many(samples, seed=EVAL_SEED)):
                cb.ready[(m.module.iteration, n)] = scores

    def on_fit_end(self, trainer, pl_module) -> None:
        self._each("on_fit_end")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._each("teardown", stage)


# ------------------------------------------------------------------------------------------------ training
def train_stack(cfgs: list[DictConfig], overrides: list[list[str] | None]) -> list[dict]:
    """Check every member, lock every member's folder, train them as one; each member's metrics.json record."""
    from ganexp.lock import folder_lock
    from ganexp.validate import check_config

    for cfg in cfgs:
        check_config(cfg)
        writes.confine(cfg.paths.output_dir)
        writes.check_tree(cfg.paths.output_dir)
    with contextlib.ExitStack() as held:
        for cfg in cfgs:
            held.enter_context(folder_lock(cfg.paths.output_dir))
        return _train_stack(cfgs, overrides)


def _train_stack(cfgs: list[DictConfig], overrides: list[list[str] | None]) -> list[dict]:
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from ganexp.build import plain
    from ganexp.registry import build
    from ganexp.results import update_metrics
    from ganexp.resume import mark_run
    from ganexp.signals import StoppedBeforeTraining, stop_on_signals, stop_reason

    members, distinct = [], []
    for k, (cfg, ov) in enumerate(zip(cfgs, overrides)):
        members.append(Member(cfg, ov, k))
        share_data(members[-1].data, distinct)  # now, not after all are built: one copy of MNIST, not 16, at a time
    stack, data = StackedGAN(members), StackedData(members)
    trainer = build(plain(cfgs[0])["trainer"], "trainer", key="trainer", callbacks=[Members(members)], logger=False)
    names = [f"{m.out.parent.name}/{m.out.name}" if m.out.name.startswith("seed=") else m.out.name for m in members]
    for m in members:
        mark_run(m.out)
        update_metrics(m.out, status="running", reason=None, diverged_at=None, stacked=True,
                       stack={"size": len(members), "member": m.index, "members": names})
    log.info("a stack of %d runs: %s", len(members), ", ".join(names))
    with stop_on_signals(stack):
        try:
            trainer.fit(stack, datamodule=data)
        except SIGTERMException:
            stack.request_stop("SIGTERM")
        except StoppedBeforeTraining as stop:
            stack.request_stop(stop.signal_name)
        except Exception:
            for m in members:
                if m.trainer is not None:
                    m.row.write_after(m.trainer, m.module, {"status": "failed", "iteration": m.module.iteration})
            raise
    records = []
    for m in members:
        module = m.module
        fields: dict[str, Any] = {"status": "finished", "iteration": module.iteration}
        if module.diverged_at is not None:
            fields.update(status="diverged", diverged_at=module.diverged_at, reason=module.divergence)
        elif module.interrupted is not None:
            fields.update(status="interrupted", signal=module.interrupted, reason=stop_reason(module))
        record = update_metrics(m.out, **fields)
        m.row.write_after(m.trainer, module, record)
        if m.logger is not None:
            m.logger.finalize("success")
        records.append(record)
    return records


# ----------------------------------------------------------------------------------------------- launching
def launch(launcher, job_overrides, initial_job_idx: int) -> list:
    """StackedLauncher.launch: Hydra's BasicLauncher, with the jobs grouped (`plan`) and each group of two
    or more trained by `train_stack`; a job that cannot stack runs as a separate run, said in one line."""
    from hydra.core.utils import configure_log, filter_overrides, run_job, setup_globals

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    jobs, keys, alone = [], [], {}
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        reason = _why_alone_here(config)
        if reason:
            alone.setdefault(reason, []).append(idx)
        jobs.append((idx, list(overrides), config))
        keys.append(None if reason else group_key(config))
    groups = plan(keys, launcher.max_stack)
    stacks = [g for g in groups if len(g) > 1]
    line = (f"stacked launcher: {len(jobs)} jobs, {sum(map(len, stacks))} of them in {len(stacks)} "
            f"stack{'s' if len(stacks) != 1 else ''} ({', '.join(str(len(g)) for g in stacks) or 'none'})")
    if alone:
        line += "; run alone: " + "; ".join(f"{len(ix)} ({reason})" for reason, ix in alone.items())
    elif len(stacks) < len(groups):
        line += f"; {len(groups) - len(stacks)} run alone (no other job shares their settings)"
    print(f"ganexp: {line}", flush=True)
    log.info(line)
    results: list = [None] * len(jobs)
    for group in groups:
        if len(group) == 1:
            idx, overrides, config = jobs[group[0]]
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            results[group[0]] = run_job(hydra_context=launcher.hydra_context, task_function=launcher.task_function,
                                        config=config, job_dir_key="hydra.sweep.dir",
                                        job_subdir_key="hydra.sweep.subdir")
        else:
            for i, ret in zip(group, _run_stack(launcher, [jobs[i] for i in group])):
                results[i] = ret
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return results


def _why_alone_here(config: DictConfig) -> str | None:
    """why_alone, plus the job folder's state: a finished job is skipped and an unfinished one resumed by
    the separate-run path; a config that does not build is reported by it too."""
    from ganexp.results import read_metrics

    out = Path(str(config.hydra.sweep.dir)) / str(OmegaConf.select(config, "hydra.sweep.subdir"))
    try:
        if read_metrics(out).get("status") == "finished":
            return "it has finished (skipped)"
        if (out / "checkpoints" / "last.ckpt").is_file():
            return "it resumes its last.ckpt"
        return why_alone(config)
    except Exception as err:  # the separate run reports it properly
        return f"{type(err).__name__}: {err}".splitlines()[0][:80]


def _prepare(cfg: DictConfig) -> dict:
    """The task function of a stack member inside Hydra's run_job: Hydra has made the job's folder, written
    its .hydra/ and opened its train.log; what the member needs from Hydra is taken now, while it is set."""
    from hydra.core.hydra_config import HydraConfig

    hydra = HydraConfig.get()
    with open_dict(cfg):
        cfg.paths.output_dir = hydra.runtime.output_dir
    logs = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return {"cfg": cfg, "overrides": list(hydra.overrides.task), "logs": logs}


def _run_stack(launcher, jobs: list) -> list:
    from hydra.core.utils import JobStatus, configure_log, filter_overrides, run_job

    from ganexp.errors import ConfigError
    from ganexp.lock import FolderInUse
    from ganexp.results import sweeper_value, update_metrics
    from ganexp.sweep import SweepInterrupted

    returns = []
    for idx, overrides, config in jobs:
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)  # not into the last job's log
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))} (stacked)")
        returns.append(run_job(hydra_context=launcher.hydra_context, task_function=_prepare, config=config,
                               job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
    ready = [r for r in returns if r.status == JobStatus.COMPLETED]
    for r in returns:
        if r.status != JobStatus.COMPLETED:
            log.error("job failed before training: %s", r._return_value)
    prepared = [r.return_value for r in ready]
    _log_to_every(sum((p["logs"] for p in prepared), []))
    for r in ready:
        r.return_value = None
    try:
        records = train_stack([p["cfg"] for p in prepared], [p["overrides"] for p in prepared])
    except (FolderInUse, writes.FolderRefused) as err:  # the folder's record belongs to the run that holds it
        log.error("stack refused: %s", err)
        return returns
    except Exception as err:
        reason = str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}".splitlines()[0]
        log.error("stack failed: %s", reason, exc_info=not isinstance(err, ConfigError))
        for p in prepared:
            update_metrics(p["cfg"].paths.output_dir, status="failed", reason=reason)
        return returns
    stopped = None
    for r, p, record in zip(ready, prepared, records):
        r.return_value = sweeper_value(record)
        if record.get("status") != "finished":
            log.error("job %s: %s (%s)", record.get("status"), record.get("reason"), p["cfg"].paths.output_dir)
        if record.get("status") == "interrupted":
            stopped = record.get("signal")
    if stopped:
        raise SweepInterrupted(stopped)
    return returns


def _log_to_every(files: list[str]) -> None:
    """The stack's log lines go into every member's train.log (Hydra opened only the last member's)."""
    root = logging.getLogger()
    handlers = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    formatter = handlers[0].formatter if handlers else None
    for h in handlers:
        root.removeHandler(h)
        h.close()
    for path in dict.fromkeys(files):
        handler = logging.StreamHandler(writes.open_append(path))  # as Hydra's FileHandler, never through a link
        handler.setFormatter(formatter)
        root.addHandler(handler)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric"):
        logger = logging.getLogger(name)  # as train.main: Lightning's lines to these handlers
        logger.handlers.clear()
        logger.propagate = True
