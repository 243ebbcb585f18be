"""Compose each job of a sweep once: the pre-run check's compositions, reused by Hydra's batch check and launch.

A multirun composes every job three times: train.py's pre-run check (config/validate.py check_command_line),
Hydra's sweeper (`validate_batch_is_legal`) and the launcher, both through `ConfigLoader.load_sweep_config`.
The check composes each job with the inputs Hydra will use — the config name, the command line's hydra
overrides + the job's sweep overrides as BasicSweeper.split_arguments makes them (the sweeper's params first,
then the command line's), RUN mode — and keeps the config here, keyed by exactly those. ganexp's launchers
(hydra_plugins/) `install` a caching load_sweep_config on the config loader in their setup: a stored job comes
back as a copy with the master's resolver cache (as Hydra's does), any other is composed by Hydra. Other
launchers and sweepers (joblib, submitit, Optuna) never look here. GANEXP_COMPOSE_STORE=0 turns it off.
"""
from __future__ import annotations

import copy
import functools
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Hydra internals used here: hydra._internal.core_plugins.basic_sweeper.BasicSweeper.split_arguments (a static
# method: the sweeper's own job lists); everything else is public (ConfigLoader.load_configuration /
# load_sweep_config / get_search_path, GlobalHydra, JobRuntime, OverridesParser).
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
_store: dict[tuple, DictConfig] = {}


def enabled() -> bool:
    return os.environ.get("GANEXP_COMPOSE_STORE", "1") != "0"


def _where(loader: Any) -> tuple:
    """What a composition depends on besides its overrides: the search path, the job name, the working folder."""
    from hydra.core.utils import JobRuntime

    path = tuple((e.provider, e.path) for e in loader.get_search_path().get_path())
    return path, JobRuntime.instance().get("name"), os.getcwd()


def forget() -> None:
    """Only the last checked command line's jobs are kept (a config file edited in between is read again)."""
    _store.clear()


def compose_job(config_name: str, overrides: list[str]) -> DictConfig:
    """`overrides` composed as ConfigLoaderImpl.load_sweep_config composes a sweep job (with the config loader
    of the current GlobalHydra), and kept for the launcher."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    loader = GlobalHydra.instance().config_loader()
    cfg = loader.load_configuration(config_name=config_name, overrides=list(overrides), run_mode=RunMode.RUN)
    if enabled():
        _store[(config_name, tuple(overrides), _where(loader))] = copy.deepcopy(cfg)
    return cfg


@functools.lru_cache(maxsize=4)  # with_grid's, for check_command_line of the same command line (which clears it)
def hydra_config(conf_dir: str, config_name: str, single: tuple[str, ...]) -> DictConfig:
    """The hydra node of the command line's single-valued overrides (hydra.sweeper.params: the grid of a
    conf/sweep/ file; hydra.mode)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(conf_dir, version_base="1.3"):
        return compose(config_name, overrides=list(single), return_hydra_config=True).hydra


def sweep_jobs(overrides: list[str], jobs: list[list[str]], hydra_cfg: DictConfig) -> list[list[str] | None]:
    """For each of `jobs` (a `-m` command line's overrides, expanded by validate.job_overrides), the overrides
    Hydra composes it with: the master's hydra overrides (the command line's, then the hydra.mode=MULTIRUN
    hydra.main adds for -m) + BasicSweeper.split_arguments' list for the grid's params set to the job's values
    (the same settings); None where Hydra's sweeper makes no such job, or two (another sweeper, a range Optuna
    searches, a key given twice, a value given twice)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    sweeper, parser = hydra_cfg.sweeper, OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    if str(sweeper.get("_target_")) != BASIC_SWEEPER or any(o.is_sweep_override() and not o.is_discrete_sweep()
                                                            for o in parsed):
        return [None] * len(jobs)
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    hydra = [o.input_line for o in parsed if o.is_hydra_override()]  # the master's hydra.overrides.hydra:
    if hydra_cfg.get("mode") != RunMode.MULTIRUN:  # hydra/_internal/utils.py _run_app, for -m
        hydra.append("hydra.mode=MULTIRUN")

    def hydra_job(job: list[str]) -> list[str] | None:
        try:  # the job's settings replace the grid's sweeps (with_grid put every key of the grid on the command line)
            task = [o for o in parser.parse_overrides(job) if not o.is_hydra_override()]
            [[one]] = BasicSweeper.split_arguments(parser.parse_overrides(params) + task, sweeper.get("max_batch_size"))
        except Exception:  # noqa: BLE001 - not one job the basic sweeper makes: Hydra composes it itself
            return None
        same = set(one) == {f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in task}
        return [*hydra, *one] if same else None

    return [hydra_job(job) if jobs.count(job) == 1 else None for job in jobs]  # a=1,1: two jobs Hydra cannot tell apart


class CachingLoad:
    """config_loader.load_sweep_config, answered from the store when it holds the job (a picklable callable)."""

    def __init__(self, loader: Any, load: Any) -> None:
        self.loader, self.load = loader, load

    def __call__(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        overrides = [*OmegaConf.to_container(master_config.hydra.overrides.hydra), *sweep_overrides]
        stored = _store.get((master_config.hydra.job.config_name, tuple(overrides), _where(self.loader)))
        if stored is None or not enabled():
            return self.load(master_config, sweep_overrides)
        cfg = copy.deepcopy(stored)
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)  # as load_sweep_config does
        return cfg


def install(config_loader: Any) -> None:
    """From a launcher's setup: its config loader's load_sweep_config first looks in the store."""
    if not isinstance(config_loader.load_sweep_config, CachingLoad):
        config_loader.load_sweep_config = CachingLoad(config_loader, config_loader.load_sweep_config)
