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
from torch.utils.data import DataLoader, Dataset, Sampler

from ganexp import lifecycle, writes
from ganexp.build import build_callbacks, build_datamodule, build_logger, build_module, build_parts, plain
from ganexp.data.base import EpochBatchSampler
from ganexp.keys import STACKABLE  # what may differ inside one stack: per-member numbers the step takes as [M] vectors
from ganexp.lock import folder_lock
from ganexp.metrics.callback import EVAL_SEED, EvalCallback
from ganexp.module import GANModule, Run
from ganexp.registry import _resolve, build, kind_of
from ganexp.results import update_metrics
from ganexp.resume import mark_run
from ganexp.stacked_nets import stack_problem, stacked
from ganexp.tensorboard import HParamsRow
from ganexp.validate import check_config

log = logging.getLogger("ganexp")

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
    settings = _settings(cfg)
    trainer = settings.get("trainer") or {}
    if settings.get("ckpt_path") or settings.get("init_from"):
        return "it starts from a checkpoint (ckpt_path / init_from)"
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


class StackedGAN(GANModule):
    """M runs trained at once by GANModule.training_step: what is its own is only the stacking proper, the
    networks run stacked (ganexp/stacked_nets.py), one stock optimizer per side over the stacked weights with
    each member's own lr, and the freezing of a member that stopped. Everything else (the step, the losses,
    the penalties, the draws) is GANModule's, over the members' [M] numbers."""

    def __init__(self, members: list["Member"]):
        pl.LightningModule.__init__(self)
        self.automatic_optimization = False
        self.runs = members
        self._members = [m.module for m in members]  # a plain list: the members are not submodules of the stack
        self.nets = nn.ModuleList(nn.ModuleList([m.generator, m.discriminator]) for m in self._members)  # moved with it
        first = self._members[0]
        self.d_steps, self.log_every, self.reuse_fake = first.d_steps, first.log_every, first.reuse_fake
        self.loss, self.prior, self.generator_ema = first.loss, first.prior, None  # their kinds; numbers are each member's
        self._start()
        self.running = [True] * len(members)
        self.keep: dict[str, tuple[tuple[bool, ...], Tensor]] = {}  # side → (`running`, its mask): _keep's
        self.owned: dict[tuple[str, int], dict] = {}  # (side, member) → its optimizer's hyperparameters
        self.lrs: dict[str, Tensor] = {}  # side → the members' learning rates, spread over the stacked weights
        self._saving: GANModule | None = None  # the member whose checkpoint trainer.save_checkpoint is writing
        for run in members:
            run.module._run = Run(run.out, run.logger, run.data, run.callbacks, self._saver(run.module))

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
        Only lr differs inside a stack (betas, momentum, decay are grouping keys), and the stock updates
        (Adam, RMSProp, SGD with momentum, weight decay included) are linear in lr while their state is not
        touched by it: one step at lr = 1, then p = p_old + lr_k·(p_step - p_old) for member k."""
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
        """Which elements of `side`'s flat weights take the step: the running members' (built again only when
        `running` changes; one mask per side is kept, each as large as the side's weights)."""
        running = tuple(self.running)
        if self.keep.get(side, (None,))[0] != running:
            nets = self.G if side == "g" else self.D
            self.keep[side] = running, nets.per_member(torch.tensor(running, device=self.device))
        return self.keep[side][1]

    def learning_rates(self, k: int) -> tuple[float, float]:
        return self.owned["g", k]["lr"], self.owned["d", k]["lr"]

    def optimizer_states(self, k: int) -> list[dict]:
        """Member k's optimizer states, as its separate run's two optimizers would save them: row k of every
        per-parameter state tensor (step counters are shared), its own hyperparameters."""
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
        """Member's own two optimizers as its separate run holds them: built by its factories over its
        parameters, with its state (copies: stepping them leaves the stack alone)."""
        k = self.members.index(member)
        optimizers = [member.optimizer_g(member.generator.parameters()),
                      member.optimizer_d(member.discriminator.parameters())]
        for optimizer, state in zip(optimizers, self.optimizer_states(k)):
            optimizer.load_state_dict(state)
        return optimizers

    def _saver(self, member: GANModule):
        def save_checkpoint(path, weights_only: bool = False) -> None:
            """Lightning's trainer.save_checkpoint writes the member's checkpoint: on_save_checkpoint below
            makes the stack's into the member's, key for key what its separate run writes."""
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
        data_state = run.data.state_dict()
        if data_state:
            checkpoint[type(run.data).__qualname__] = data_state
        for cb in run.callbacks:
            cb.on_save_checkpoint(self.trainer, member, checkpoint)
        member.on_save_checkpoint(checkpoint)

    def on_fit_start(self) -> None:
        pass  # each member's own on_fit_start runs from Members (with its own logger)

    def request_stop(self, signal_name: str) -> None:
        """A signal (ganexp/signals.py): every member finishes this iteration, checkpoints it and stops."""
        super().request_stop(signal_name)
        for m in self.members:
            m.request_stop(signal_name)
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
class Member:
    """One job of a stack, built exactly as train._train builds a separate run: its own module, data,
    callbacks, logger and folder (its module's `run`); the stack's trainer is its trainer."""

    def __init__(self, cfg: DictConfig, overrides: list[str] | None, index: int):
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


# Callback hooks Members handles itself; every other hook of Lightning's Callback reaches every running member.
_OWN_HOOKS = {"setup", "on_fit_start", "on_train_batch_end", "on_train_end", "on_save_checkpoint",
              "on_load_checkpoint", "state_dict", "load_state_dict"}
_MODULE_HOOKS = {"on_fit_start", "on_train_start", "on_train_epoch_start", "on_train_epoch_end", "on_train_end",
                 "on_fit_end"}  # LightningModule hooks of the same name, called on each member module too


_END_HOOKS = {"on_fit_end", "teardown", "on_exception"}  # ...reach a member that stopped too


class Members(Callback):
    """The stack's one callback: every Lightning callback hook, called for each member on its own callbacks
    with (the stack's trainer, the member's module), and the member module's own hook of that name; a member
    that stopped (diverged, or frozen by a signal) gets its end hooks only. Member things (folder, logger,
    data, checkpoint writer) are the module's `run`."""

    def __init__(self, members: list[Member]):
        self.members = members

    def _each(self, hook: str, trainer, *args: Any, members: list[Member] | None = None) -> None:
        for m in self.members if members is None else members:
            if hook in _MODULE_HOOKS:
                getattr(m.module, hook)()
            for cb in m.callbacks:
                getattr(cb, hook)(trainer, m.module, *args)

    def _running(self, pl_module) -> list[Member]:
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
        if not any(pl_module.running):
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        self._score_together([m for m in self.members if m.module.diverged_at is None and m.module.interrupted is None],
                             final=True)
        self._each("on_train_end", trainer)

    @staticmethod
    def _score_together(members: list[Member], final: bool) -> None:
        """The evaluations due now (every `eval.every` iterations; `final`: the last one, on `n_final` samples),
        scored together: each member's samples from its own generator, all of them through the classifier in
        one call (Evaluator.score_many); each EvalCallback then takes its scores from its `ready`."""
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


# ------------------------------------------------------------------------------------------------ training
def train_stack(cfgs: list[DictConfig], overrides: list[list[str] | None]) -> list[dict]:
    """Check every member, lock every member's folder, train them as one; each member's metrics.json record."""
    for cfg in cfgs:
        check_config(cfg)
        writes.confine(cfg.paths.output_dir)
        writes.check_tree(cfg.paths.output_dir)
    with contextlib.ExitStack() as held:
        for cfg in cfgs:
            held.enter_context(folder_lock(cfg.paths.output_dir))
        return _train_stack(cfgs, overrides)


def _train_stack(cfgs: list[DictConfig], overrides: list[list[str] | None]) -> list[dict]:
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
    lifecycle.fit(trainer, stack, data, [(m.row, m.module) for m in members])
    records = [lifecycle.finish(trainer, m.module, m.row, m.out) for m in members]
    for m in members:
        if m.logger is not None:
            m.logger.finalize("success")
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
