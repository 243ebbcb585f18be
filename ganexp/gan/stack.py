"""Stacked sweeps: a sweep's jobs that differ only in stackable settings, trained as one model.

`hydra/launcher=stacked` (hydra_plugins/ganexp_stacked) groups a sweep's jobs by everything but the
STACKABLE keys and hands each group of two or more to `train_stack`. Every member stays a real run: its
own GANModule, datamodule, callbacks, logger, run folder, metrics.json and checkpoints. Only the arithmetic
is shared: each network runs once for all members (ganexp/gan/stacked_nets.py), and one stock optimizer
steps the stacked weights, each member with its own lr. A member draws from its own generator and its batches
in its own order, so it computes what its separate run computes, up to float rounding. A member that
diverges is frozen while the others go on; `trainer.max_time` is the stack's.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from ganexp.callbacks.loggers import Loggers
from ganexp.data.base import EpochBatchSampler, IndexedTensor
from ganexp.metrics.callback import EVAL_SEED, EvalCallback
from ganexp.gan.module import GANModule, Run
from ganexp.gan.stacked_nets import stacked

log = logging.getLogger("ganexp")


class StackedGAN(GANModule):
    """M runs trained at once by GANModule.training_step: its own is only the stacking proper (the stacked
    networks, one optimizer per side with each member's own lr, the freezing of a member that stopped)."""

    def __init__(self, members: list):
        pl.LightningModule.__init__(self)
        self.automatic_optimization = False
        self._members = [m.module for m in members]  # a plain list: the members are not submodules of the stack
        self.nets = nn.ModuleList(nn.ModuleList([m.generator, m.discriminator]) for m in self._members)  # moved with it
        first = self._members[0]
        self.d_steps, self.log_every, self.reuse_fake = first.d_steps, first.log_every, first.reuse_fake
        self.loss, self.prior, self.generator_ema = first.loss, first.prior, None  # their kinds; numbers are each member's
        self.augment = first.augment  # augment.policy is not stackable: every member's is this one
        self._start()
        self.running = [True] * len(members)
        self.keep: dict[str, tuple[tuple[bool, ...], Tensor]] = {}  # side → (`running`, its mask): _keep's
        self.owned: dict[tuple[str, int], dict] = {}  # (side, member) → its optimizer's hyperparameters
        self.lrs: dict[str, Tensor] = {}  # side → the members' learning rates, spread over the stacked weights
        self._saving: GANModule | None = None  # the member whose checkpoint trainer.save_checkpoint is writing
        for run in members:
            run.module._run = Run(run.out, Loggers.of(run.logger), run.data, run.callbacks, self._saver(run.module))

    @property
    def members(self) -> list[GANModule]:
        return self._members

    def per_member(self, batch: Tensor) -> Tensor:
        return batch  # StackedData's batches are [M, N, ...] already

    def configure_optimizers(self):
        self.G = stacked([m.generator for m in self.members])
        self.D = stacked([m.discriminator for m in self.members])
        self.G.bind()  # on the training device now; the members' parameters become views of the stack's weights
        self.D.bind()
        return [self._optimizer("g"), self._optimizer("d")]

    def _optimizer(self, side: str) -> torch.optim.Optimizer:
        """One stock optimizer over the stacked weights (`flat`) with lr = 1; `step` gives each member its own lr.
        Only lr differs inside a stack (betas, momentum, decay are grouping keys), and the stock updates are
        linear in lr while their state is not touched by it."""
        lrs = []
        for k, mod in enumerate(self.members):
            net, factory = (mod.generator, mod.optimizer_g) if side == "g" else (mod.discriminator, mod.optimizer_d)
            own = {key: v for key, v in factory(net.parameters()).param_groups[0].items() if key != "params"}
            self.owned[side, k] = own  # what its separate run's optimizer holds
            lrs.append(float(own["lr"]))
        nets = self.G if side == "g" else self.D
        self.lrs[side] = nets.per_member(torch.tensor(lrs, device=self.device))  # each element's member's lr
        factory = self.members[0].optimizer_g if side == "g" else self.members[0].optimizer_d
        return factory([{"params": [nets.flat], "lr": 1.0}])

    @torch.no_grad()
    def step(self, optimizer, side: str) -> None:
        """The stock step at lr = 1, then each member's own lr: p_old + lr_k·(p_step - p_old). A frozen
        member's rows stay as they were."""
        flat = (self.G if side == "g" else self.D).flat
        before = flat.clone()
        optimizer.step()
        new = torch.lerp(before, flat, self.lrs[side])
        if not all(self.running):
            new = torch.where(self._keep(side), new, before)
        flat.copy_(new)

    def _keep(self, side: str) -> Tensor:
        """Which elements of `side`'s flat weights take the step: the running members' (kept until `running`
        changes)."""
        running = tuple(self.running)
        if self.keep.get(side, (None,))[0] != running:
            nets = self.G if side == "g" else self.D
            self.keep[side] = running, nets.per_member(torch.tensor(running, device=self.device))
        return self.keep[side][1]

    def learning_rates(self, k: int) -> tuple[float, float]:
        return self.owned["g", k]["lr"], self.owned["d", k]["lr"]

    def optimizer_states(self, k: int) -> list[dict]:
        """Member k's optimizer states as its separate run's two optimizers would save them: row k of every
        per-parameter state tensor, its own hyperparameters."""
        states = []
        for side, optimizer in zip("gd", self.trainer.optimizers):
            nets = self.G if side == "g" else self.D
            state = optimizer.state_dict()["state"].get(0, {})  # its one parameter: `flat`
            rows = {i: {key: (v[slice(*nets.spans[name])].view(leaf.shape)[k].clone()
                              if isinstance(v, Tensor) and v.shape == nets.flat.shape
                              else v.clone() if isinstance(v, Tensor) else v) for key, v in state.items()}
                    for i, (name, leaf) in enumerate(nets.leaves.items()) if state}
            states.append({"state": rows, "param_groups": [{**self.owned[side, k], "params": list(range(len(nets.leaves)))}]})
        return states

    def member_optimizers(self, member: GANModule) -> list[torch.optim.Optimizer]:
        """Member's own two optimizers as its separate run holds them, with copies of its state."""
        k = self.members.index(member)
        optimizers = [member.optimizer_g(member.generator.parameters()),
                      member.optimizer_d(member.discriminator.parameters())]
        for optimizer, state in zip(optimizers, self.optimizer_states(k)):
            optimizer.load_state_dict(state)
        return optimizers

    def _saver(self, member: GANModule):
        def save_checkpoint(path, weights_only: bool = False) -> None:  # on_save_checkpoint makes it the member's
            self._saving = member
            try:
                self.trainer.save_checkpoint(path, weights_only=weights_only)
            finally:
                self._saving = None
        return save_checkpoint

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        member = self._saving
        if member is None:
            raise RuntimeError("a stack is saved only as its members' checkpoints (Member.run.save_checkpoint)")
        run = member.run
        checkpoint.pop(type(self.trainer.datamodule).__qualname__, None)
        checkpoint.update({
            "state_dict": {k: v.clone() for k, v in member.state_dict().items()},  # a view would save the whole stack
            "optimizer_states": self.optimizer_states(self.members.index(member)), "lr_schedulers": [],
            "callbacks": {cb.state_key: state for cb in run.callbacks if (state := cb.state_dict())},
            "hparams_name": "kwargs", "hyper_parameters": copy.deepcopy(dict(member.hparams)),
        })
        if data_state := run.data.state_dict():
            checkpoint[type(run.data).__qualname__] = data_state
        for cb in run.callbacks:
            cb.on_save_checkpoint(self.trainer, member, checkpoint)
        member.on_save_checkpoint(checkpoint)

    def request_stop(self, signal_name: str) -> None:
        """A signal (ganexp/run/signals.py): every member finishes this iteration, checkpoints it and stops."""
        super().request_stop(signal_name)  # the trainer stops after the members' callbacks saved this iteration
        for m in self.members:
            m.request_stop(signal_name)


# ----------------------------------------------------------------------------------------------- the data
class _Gather(IndexedTensor):
    """Member k's batch [k, index[k]] from its own data, the members' data stacked [M, n, ...]."""

    def __len__(self) -> int:
        return self.data.shape[1]

    def __getitem__(self, index: Tensor) -> Tensor:
        index = index.to(self.data.device, non_blocking=True)
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
    go; else add it there (members that differ only in seed, lr, smoothing or σ mostly load the same data)."""
    mine = data.train_data
    same = next((t for t in distinct if t is mine or (t.shape == mine.shape and torch.equal(t, mine))), None)
    if same is None:
        distinct.append(mine)
    else:
        data.train_data = same


class StackedData(pl.LightningDataModule):
    def __init__(self, members: list):
        super().__init__()
        self.datas, distinct = [m.data for m in members], []
        for d in self.datas:
            share_data(d, distinct)  # one copy in memory of what they share
        self.shared = len(distinct) == 1
        self.data = distinct[0] if self.shared else torch.stack([d.train_data for d in self.datas])

    def train_dataloader(self) -> DataLoader:
        device = self.trainer.strategy.root_device
        n = len(self.datas[0].train_data)
        samplers = [EpochBatchSampler(n, d.batch_size, d.seed) for d in self.datas]
        data = (IndexedTensor if self.shared else _Gather)(self.data.to(device))  # shared: one [n, ...] tensor
        return DataLoader(data, sampler=_Samplers(samplers), batch_size=None, generator=torch.Generator())


# -------------------------------------------------------------------------------------------- the members
# Callback hooks Members handles itself; every other hook of Lightning's Callback reaches every running member.
_OWN_HOOKS = {"setup", "on_fit_start", "on_train_batch_end", "on_train_epoch_end", "on_train_end",
              "on_save_checkpoint", "on_load_checkpoint", "state_dict", "load_state_dict"}
_MODULE_HOOKS = {"on_fit_start", "on_train_start", "on_train_epoch_start", "on_train_epoch_end", "on_train_end",
                 "on_fit_end"}  # LightningModule hooks of the same name, called on each member module too
_END_HOOKS = {"on_fit_end", "teardown", "on_exception"}  # ...reach a member that stopped too


class Members(Callback):
    """The stack's one callback: every Lightning callback hook, called for each member on its own callbacks
    with (the stack's trainer, the member's module), and the member module's own hook of that name; a member
    that stopped gets the end of its last epoch (as its own run's Lightning loop would call it), then its end
    hooks only."""

    def __init__(self, members: list):
        self.members = members
        self.stopped_this_epoch: list = []

    def _each(self, hook: str, trainer, *args: Any, members: list | None = None) -> None:
        for m in self.members if members is None else members:
            if hook in _MODULE_HOOKS:
                getattr(m.module, hook)()
            for cb in m.callbacks:
                getattr(cb, hook)(trainer, m.module, *args)

    def _running(self, pl_module) -> list:
        return [m for m, running in zip(self.members, pl_module.running) if running]

    def setup(self, trainer, pl_module, stage: str) -> None:
        for m in self.members:
            m.module.trainer = trainer  # epoch, progress, budget, device: the stack's trainer is theirs
            m.data.trainer = trainer
            object.__setattr__(m.module, "stack", pl_module)  # not a submodule: the stack holds them, not they it
        self._each("setup", trainer, stage)

    def on_fit_start(self, trainer, pl_module) -> None:
        for m in self.members:
            m.module.to(pl_module.device)
        self._each("on_fit_start", trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ran = self._running(pl_module)
        self._score_together(ran, final=False)
        self._each("on_train_batch_end", trainer, None, None, batch_idx, members=ran)
        pl_module.running = [running and not m.module.stopped for m, running in zip(self.members, pl_module.running)]
        self.stopped_this_epoch += [m for m in ran if m.module.stopped]
        if not any(pl_module.running):
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        stopped = {id(m) for m in self.stopped_this_epoch}
        ended = [m for m, running in zip(self.members, pl_module.running) if running or id(m) in stopped]
        self.stopped_this_epoch = []
        self._each("on_train_epoch_end", trainer, members=ended)

    def on_train_end(self, trainer, pl_module) -> None:
        self._score_together([m for m in self.members if m.module.diverged_at is None and m.module.interrupted is None],
                             final=True)
        self._each("on_train_end", trainer)

    @staticmethod
    def _score_together(members: list, final: bool) -> None:
        """The evaluations due now (`final`: the last one, on `n_final` samples), all members' samples through the
        classifier in one call (Evaluator.score_many); each EvalCallback then takes its scores from `ready`."""
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


def _forward(hook: str):
    def forward(self, trainer, pl_module, *args, **kwargs) -> None:
        members = None if hook in _END_HOOKS else self._running(pl_module)
        self._each(hook, trainer, *args, *kwargs.values(), members=members)
    forward.__name__ = hook
    return forward


for _hook in [name for name in vars(Callback) if (name.startswith("on_") or name == "teardown")]:
    if _hook not in _OWN_HOOKS:
        setattr(Members, _hook, _forward(_hook))
