"""Parallel sweeps on one machine: one job per GPU, CPU threads divided between jobs.

`hydra/launcher=parallel` (conf/hydra/launcher/parallel.yaml) runs jobs in joblib
worker processes, `n_jobs` at a time: as many as there are GPUs, else CPU cores.
Inside each job `job_resources` then
- divides the CPU cores between the concurrent jobs (`torch.set_num_threads`), and
- on GPUs, takes an exclusive lock on a free GPU for the job's lifetime
  (`<tmp>/ganexp-gpu-locks/gpu<N>.lock`, machine-wide, so two sweeps on one machine
  never share a GPU either) and points the job's trainer at it. A job that finds every
  GPU taken waits for one; a worker that dies releases its lock with its process.
SLURM (`hydra/launcher=slurm`) gives each task its own GPU itself: nothing to do here.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig, OmegaConf

from ganexp.config import CONF_DIR
from ganexp.errors import ConfigError
from ganexp.io import writes

log = logging.getLogger("ganexp")
GPU_LOCKS = Path(tempfile.gettempdir()) / "ganexp-gpu-locks"  # machine-wide: two sweeps never share a GPU either

# conf/hydra/launcher/<name>.yaml or Hydra's own launcher name → the plugin it needs, and its extra
PLUGINS = {
    "parallel": ("hydra_plugins.hydra_joblib_launcher", "parallel"),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "parallel"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
}


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def parallel_jobs() -> int:
    """Jobs at a time for `hydra/launcher=parallel`: one per GPU, else one per CPU core."""
    return visible_gpus() or os.cpu_count() or 1


OmegaConf.register_new_resolver("ganexp_parallel_jobs", parallel_jobs, replace=True)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package (hydra_plugins) is missing too
        return False


SEARCH = ("hydra_plugins.hydra_optuna_sweeper", "search")


def check_launcher(args: list[str]) -> None:
    """`hydra/launcher=X`, `hydra/sweeper=optuna` or `sweep=search` whose plugin is not installed: one
    line that says what to install; a stacked launcher's max_stack that is not a count."""
    for arg in args:
        key, _, name = arg.partition("=")
        key = key.lstrip("+")
        needs = (PLUGINS.get(name) if key == "hydra/launcher" else
                 SEARCH if (key, name) in (("hydra/sweeper", "optuna"), ("sweep", "search")) else None)
        if key == "hydra.launcher.max_stack" and not (name.isdigit() and int(name) >= 1):  # else Hydra's 4 lines
            raise ConfigError(f"{key}={name} is not an integer >= 1; use the most members one stack may hold, "
                              "e.g. hydra.launcher.max_stack=16")
        module, extra = needs or ("", "")
        if module and not _installed(module):
            raise ConfigError(f"{key}={name} needs the {module.split('.')[-1].replace('_', '-')} plugin; "
                              f"install it with: pip install -e '.[{extra}]'")
    if "hydra/launcher=slurm" in args:
        _check_signal_delay(args)


def _check_signal_delay(args: list[str]) -> None:
    """submitit takes SIGUSR2 for a time limit only after min(80 %, all but 10 min) of the time, counted from its
    own start: a notice earlier than that is a "preemption", which is requeued without limit, so every time limit
    would be requeued forever. slurmctld may send it up to a minute early, and start-up takes a while: 2 min spare."""
    given = dict(a.lstrip("+").split("=", 1) for a in args if a.lstrip("+").startswith("hydra.launcher.") and "=" in a)
    defaults = OmegaConf.load(CONF_DIR / "hydra" / "launcher" / "slurm.yaml")
    try:
        timeout = int(given.get("hydra.launcher.timeout_min", defaults.timeout_min))
        delay = int(given.get("hydra.launcher.signal_delay_s", defaults.signal_delay_s))
    except ValueError:
        return  # not a number: Hydra's own check of the launcher's config says so
    most = min(max(0.2 * timeout * 60, 600) - 120, timeout * 60 - 1)
    if delay >= timeout * 60:
        raise ConfigError(f"hydra.launcher.signal_delay_s={delay} is not shorter than the time limit "
                          f"(timeout_min={timeout}, {timeout * 60} s): the notice would come as the job starts; "
                          f"use a smaller signal_delay_s, e.g. hydra.launcher.signal_delay_s={int(most) // 3}")
    if delay > most:
        raise ConfigError(f"hydra.launcher.signal_delay_s={delay} is more than {most:.0f} s for timeout_min={timeout}: "
                          "submitit would take each time limit for a preemption and requeue the job forever; use "
                          f"at most max(20 % of the time limit, 600 s) less 120 s, e.g. "
                          f"hydra.launcher.signal_delay_s={min(120, int(most))}")


def lock_free_gpu(count: int, folder: Path = GPU_LOCKS, poll_s: float = 1.0) -> tuple[int, object]:
    """Index of a visible GPU no other ganexp job holds, and the open lock file that holds it (close it to release)."""
    folder.mkdir(exist_ok=True)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    physical = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(count)]
    while True:
        for index in range(count):
            handle = os.fdopen(writes.open_fd(folder / f"gpu{physical[index]}.lock", os.O_WRONLY), "w")  # /tmp is shared
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return index, handle
            except BlockingIOError:
                handle.close()
        time.sleep(poll_s)


@contextlib.contextmanager
def job_resources(cfg: DictConfig) -> Iterator[None]:
    """In a job of a parallel sweep: its share of the CPU threads and a GPU of its own."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    launcher = hydra_cfg.launcher if hydra_cfg is not None else None
    if launcher is None or "joblib" not in str(launcher.get("_target_", "")):
        yield
        return
    import torch

    cores, n_jobs = os.cpu_count() or 1, int(launcher.get("n_jobs") or 1)
    jobs = max(1, n_jobs if n_jobs > 0 else cores + 1 + n_jobs)  # joblib: -1 = all cores, -2 = all but one
    threads = max(1, cores // jobs)
    torch.set_num_threads(threads)
    held = None
    gpus = visible_gpus() if str(cfg.trainer.accelerator) in ("auto", "gpu", "cuda") else 0
    if gpus:
        index, held = lock_free_gpu(gpus, GPU_LOCKS)
        cfg.trainer.accelerator, cfg.trainer.devices = "gpu", [index]
    log.info("parallel job %s (pid %d): up to %d jobs at a time, %d torch threads, %s",
             OmegaConf.select(hydra_cfg, "job.num", default="?"),
             os.getpid(), jobs, threads, f"GPU {cfg.trainer.devices[0]}" if gpus else "CPU")
    try:
        yield
    finally:
        if held is not None:
            held.close()  # closing the file releases the lock
