"""Stacked sweeps, the launching side: which of a sweep's jobs stack, and a stack's run lifecycle.

`hydra/launcher=stacked` (hydra_plugins/ganexp_stacked) composes each job once, groups the jobs by
everything but the STACKABLE keys (config/keys.py) and hands each group of two or more to `train_stack`,
which checks and locks every member's folder and trains them as one `StackedGAN` (ganexp/gan/stack.py)
under the same lifecycle as a separate run (ganexp/run/lifecycle.py). A job that cannot stack runs as a
separate run, said in one line.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict

from ganexp.run.build import PARTS, build_callbacks, build_logger, build_parts, plain
from ganexp.config.keys import STACKABLE  # what may differ inside one stack: per-member numbers the step takes as [M] vectors
from ganexp.config.registry import KNOWN, MOVED, _resolve, build, kind_of
from ganexp.run.validate import check_config
from ganexp.errors import ConfigError
from ganexp.gan.stack import Members, StackedData, StackedGAN, share_data
from ganexp.gan.stacked_nets import stack_problem
from ganexp.run import lifecycle
from ganexp.io import writes
from ganexp.io.files import select
from ganexp.run.lock import FolderInUse, folder_lock
from ganexp.io.results import read_metrics, sweeper_value, update_metrics
from ganexp.callbacks.loggers import Loggers
from ganexp.run.tensorboard import HParamsRow
from ganexp.sweeps.summary import SweepInterrupted

log = logging.getLogger("ganexp")

PRECISIONS = ("32-true", "32", 32)


class Member:
    """One job of a stack, built exactly as lifecycle.train builds a separate run: its own module, data,
    callbacks, logger and folder (its module's `run`); the stack's trainer is its trainer."""

    def __init__(self, cfg: DictConfig, overrides: list[str] | None, index: int):
        self.cfg, self.overrides, self.index = cfg, overrides, index
        self.out = Path(cfg.paths.output_dir)
        self.data, self.module = lifecycle.build_run(cfg)  # as its separate run builds them
        config = plain(cfg)
        self.row = HParamsRow(overrides)
        self.callbacks = [*build_callbacks(config), self.row]
        self.logger = Loggers.of(build_logger(config))


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
        parent, _, last = dotted.rpartition(".")
        node = select(settings, parent) if parent else settings
        if isinstance(node, dict):
            node.pop(last, None)
    return json.dumps(settings, sort_keys=True, default=str)


LINEAR_IN_LR = ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.RMSprop", "torch.optim.SGD")


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
        # a stack's members share one trainer: a callback of the user's own (which may read the trainer's logger,
        # folder, batch or should_stop) stacks only when its class promises to read its run from pl_module.run
        if kind_of(target) and not getattr(_resolve(target), "stackable", MOVED.get(target, target) in KNOWN):
            return (f"callbacks.{name} ({target.rsplit('.', 1)[-1]}) is not ganexp's own and does not declare "
                    "stackable = True (members share one trainer)")
    for side in ("g", "d"):  # StackedGAN.step: each member's lr scales a step taken at lr = 1, exact when linear in lr
        target = ((settings.get("optimizer") or {}).get(side) or {}).get("_target_")
        if target not in LINEAR_IN_LR:
            return f"optimizer.{side} ({str(target).rsplit('.', 1)[-1]}) is not one whose step is linear in lr"
    with torch.device("meta"):
        parts = build_parts({k: settings[k] for k in PARTS if k in settings})
    for side in ("generator", "discriminator"):
        if problem := stack_problem(parts[side]):
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
        lifecycle.start(m.out, stacked=True, stack={"size": len(members), "member": m.index, "members": names})
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
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    jobs, keys, alone = [], [], {}
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = idx
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
            results[group[0]] = _run_job(launcher, *jobs[group[0]], launcher.task_function)
        else:
            for i, ret in zip(group, _run_stack(launcher, [jobs[i] for i in group])):
                results[i] = ret
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return results


def _run_job(launcher, idx: int, overrides: list[str], config: DictConfig, task, note: str = ""):
    """Hydra's run_job of one job in its sweep folder, logged as BasicLauncher logs it."""
    log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}{note}")
    return run_job(hydra_context=launcher.hydra_context, task_function=task, config=config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


def _why_alone_here(config: DictConfig) -> str | None:
    """why_alone, plus the job folder's state: a finished job is skipped and an unfinished one resumed by
    the separate-run path; a config that does not build is reported by it too."""
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
    hydra = HydraConfig.get()
    with open_dict(cfg):
        cfg.paths.output_dir = hydra.runtime.output_dir
    logs = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return {"cfg": cfg, "overrides": list(hydra.overrides.task), "logs": logs}


def _run_stack(launcher, jobs: list) -> list:
    returns = []
    for idx, overrides, config in jobs:
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)  # not into the last job's log
        returns.append(_run_job(launcher, idx, overrides, config, _prepare, " (stacked)"))
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
    lifecycle.lightning_logs_to_hydra()
