"""The end of every multirun: the leaderboard, and how many jobs failed.

`SweepSummary` is a Hydra callback (conf/hydra/default.yaml): after the last job, whatever the launcher, it
reads the job folders, writes summary.md / .csv / .png and prints the table and a count. Hydra gives a
callback no say in the exit status, so the count is kept here for train.py's `sys.exit(exit_status())`.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ganexp.run.compose import hydra_config

_unfinished: int | None = None  # jobs of the last multirun in this process that did not finish
_running: tuple[Path, str | None] | None = None  # (sweep folder, metric) of the multirun in progress
_interrupted_by: str | None = None  # the signal that stopped the last multirun


class SweepInterrupted(BaseException):
    """A job was stopped by SIGINT / SIGTERM: the sweep starts no further job. A BaseException, so that
    Hydra's launcher does not record it as one failed job and go on; train.py's __main__ catches it."""


class SweepSummary(Callback):
    def __init__(self, metric: str | None = None):
        self.metric = metric

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _unfinished, _running, _interrupted_by
        _unfinished, _interrupted_by = None, None
        _running = (Path(str(config.hydra.sweep.dir)), self.metric)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        report(Path(str(config.hydra.sweep.dir)), self.metric)


def report(sweep_dir: Path, metric: str | None) -> None:
    """The leaderboard printed, summary files written, and the count of jobs that did not finish."""
    from ganexp.sweeps.compare import summarize, write
    from ganexp.errors import ConfigError

    global _unfinished
    try:
        summary = summarize(sweep_dir, metric)
    except ConfigError as err:  # a folder too large to be a sweep's: Hydra would swallow it, and exit 0
        _unfinished = 1
        print(f"ganexp: error: no summary of {sweep_dir}: {err}", file=sys.stderr, flush=True)
        return
    _unfinished = len(summary.failures)  # counted before anything else can go wrong
    print(summary.markdown, flush=True)
    try:
        written = ", ".join(p.name for p in write(summary))
    except OSError as err:
        written = f"nothing (cannot write into {sweep_dir}: {err.strerror or type(err).__name__})"
    except ConfigError as err:  # a link the writer refuses (writes.LinkRefused): one line, the sweep's count stands
        written = f"nothing ({err})"
    line = f"sweep {sweep_dir}: {summary.count_line()}; summary in {written}"
    if summary.failures:
        line += f"; re-run the same command with hydra.sweep.dir={sweep_dir} to retry them (finished jobs are skipped)"
    print(f"ganexp: {line}", file=sys.stderr if summary.failures else sys.stdout, flush=True)


def interrupted(signal_name: str) -> None:
    """After SweepInterrupted: the summary of the jobs that ran (the interrupted one is marked)."""
    global _interrupted_by
    _interrupted_by = signal_name
    if _running is not None:
        report(*_running)


def ended_without_summary() -> None:
    """After Hydra ended a multirun with an error once jobs had run (it exits 1: e.g. the Optuna sweeper asking
    for the best trial when every trial failed or diverged): the summary of the jobs that ran, and one line."""
    global _unfinished
    if _running is None or _unfinished is not None:
        return
    try:
        report(*_running)
    except Exception as err:  # noqa: BLE001 - the sweep's own error is the one that matters
        print(f"ganexp: no summary of {_running[0]}: {err}", file=sys.stderr, flush=True)
    _unfinished = _unfinished or 1
    print(f"ganexp: error: the sweep in {_running[0]} ended with the error above (an Optuna search does so when "
          "no trial finished); the summary above is of the jobs that ran", file=sys.stderr, flush=True)


def with_grid(args: list[str], conf_dir: Path, config_name: str = "train") -> list[str]:
    """A multirun command line plus the grid its config declares (hydra.sweeper.params, e.g. from a
    conf/sweep/ file) as sweep overrides, so that every job of a ready-made sweep is checked up front."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if not a.startswith("-")]
    if not any(a in ("-m", "--multirun") for a in args):
        return args
    try:
        single = [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()]
        params = hydra_config(str(Path(conf_dir).resolve()), config_name, tuple(single)).sweeper.get("params")
    except Exception:  # noqa: BLE001 - a bad command line: check_command_line says what is wrong with it
        return args
    given = {a.split("=", 1)[0].lstrip("+~") for a in overrides}  # the command line wins, as in Hydra
    return args + [f"{key}={value}" for key, value in (params or {}).items() if key not in given]


def exit_status() -> int:
    """0 unless the last multirun in this process had a job that did not finish (then 1), or was
    interrupted (then 128 + the signal: 129 SIGHUP, 130 SIGINT, 143 SIGTERM)."""
    from ganexp.run.signals import EXIT_CODES

    if _interrupted_by:
        return EXIT_CODES[_interrupted_by]
    return 1 if _unfinished else 0
