"""The end of every multirun: the leaderboard, and how many jobs failed.

`SweepSummary` is a Hydra callback (conf/hydra/default.yaml, `hydra.callbacks.summary`).
Its `on_multirun_end` runs in the launching process after the last job, whatever the
launcher (jobs in this process, joblib workers, SLURM tasks): it reads the job folders
from disk, writes summary.md / summary.csv / summary.png, prints the table and a count.

Hydra swallows what a callback raises and gives it no say in the exit status, so the
count is kept here and `train.py` ends with `sys.exit(exit_status())`: 0 when every job
of the sweep finished, 1 when any failed, diverged or never finished.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

_unfinished: int | None = None  # jobs of the last multirun in this process that did not finish


class SweepSummary(Callback):
    def __init__(self, metric: str | None = None):
        self.metric = metric

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _unfinished
        _unfinished = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from ganexp.compare import summarize, write

        global _unfinished
        sweep_dir = Path(str(config.hydra.sweep.dir))
        summary = summarize(sweep_dir, self.metric)
        _unfinished = len(summary.failures)  # counted before anything else can go wrong
        written = write(summary)
        print(summary.markdown, flush=True)
        line = f"sweep {sweep_dir}: {summary.count_line()}; summary in {', '.join(p.name for p in written)}"
        if summary.failures:
            line += f"; re-run the same command with hydra.sweep.dir={sweep_dir} to retry them (finished jobs are skipped)"
        print(f"ganexp: {line}", file=sys.stderr if summary.failures else sys.stdout, flush=True)


def exit_status() -> int:
    """0 unless the last multirun in this process had a job that did not finish (then 1)."""
    return 1 if _unfinished else 0
