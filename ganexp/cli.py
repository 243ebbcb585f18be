"""What `python train.py` does around a run: check the whole command line before Hydra makes a folder, run
each job (ganexp/run/lifecycle.py), turn its outcome into one line and an exit status.

Exit status: 0 finished, 2 bad input (one line on stderr), 3 diverged (NaN/Inf loss; the last good
checkpoint is kept), 129 / 130 / 143 stopped by SIGHUP / SIGINT / SIGTERM (that iteration checkpointed),
1 any other failure (metrics.json says why); a sweep with a job that did not finish exits 1.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ganexp.config import CONF_DIR
from ganexp.run.validate import check_command_line
from ganexp.errors import ConfigError
from ganexp.run.lifecycle import lightning_logs_to_hydra, record_failure, train
from ganexp.run.jobs import SWEPT, sweep_keys
from ganexp.run.lock import FolderInUse
from ganexp.io.results import sweeper_value, update_metrics
from ganexp.run.signals import EXIT_CODES, HANDED_OVER, hand_over, managed
from ganexp.io.writes import FolderRefused
from ganexp.sweeps.launch import check_launcher, job_resources
from ganexp.sweeps.summary import SweepInterrupted, ended_without_summary, exit_status, interrupted, with_grid

log = logging.getLogger("ganexp")


def job(cfg: DictConfig) -> float | None:
    """The @hydra.main task: one run (a sweep's job), its outcome as the sweeper's value or an exit."""
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    lightning_logs_to_hydra()
    try:
        with job_resources(cfg):  # parallel sweeps: a share of the CPU threads, a GPU of its own
            record, _ = train(cfg, list(HydraConfig.get().overrides.task))
    except (FolderInUse, FolderRefused) as err:  # the folder's record belongs to the run that holds it / nothing written
        return _fail(multirun, "refused", str(err), 2)
    except ConfigError as err:
        record_failure(cfg.paths.output_dir, "failed", str(err))
        return _fail(multirun, "failed", str(err), 2)
    except Exception as err:
        record_failure(cfg.paths.output_dir, "failed", f"{type(err).__name__}: {err}".splitlines()[0])
        if multirun:
            log.exception("job failed")
            return None
        raise
    if record.get("status") == "diverged":
        return _fail(multirun, "diverged", divergence_message(record, Path(cfg.paths.output_dir)), 3)
    if record.get("status") == "interrupted":
        last = Path(cfg.paths.output_dir).resolve() / "checkpoints" / "last.ckpt"
        if managed():  # a SLURM job of hydra/launcher=slurm: submitit requeues it (or SLURM does)
            return requeue(record, Path(cfg.paths.output_dir), multirun)
        if multirun:  # no further jobs; command_line writes the summary of those that ran
            log.error("job interrupted: %s", record["reason"])
            raise SweepInterrupted(record["signal"])
        then = (f"{last} holds it; resume with: python train.py ckpt_path={last}" if last.is_file()
                else "nothing was trained yet; run the same command again")
        print(f"ganexp: interrupted by {record['reason']}; {then}", file=sys.stderr)
        sys.exit(EXIT_CODES[record["signal"]])
    return sweeper_value(record)  # a number, or none (a failed trial)


def requeue(record: dict, out: Path, multirun: bool) -> None:
    """A job that submitit manages stopped cleanly (last.ckpt and metrics.json written). On SLURM's SIGUSR2
    submitit requeues it and exits; the next attempt resumes from last.ckpt. No retries left: metrics.json says
    how to go on. Any other signal (a preemption's or scancel's SIGTERM): exit with no result, so that SLURM
    requeues the job (PreemptMode=REQUEUE) or the sweep counts it as one job that ended without a result."""
    then = ("it resumes from its last.ckpt" if (out / "checkpoints" / "last.ckpt").is_file()
            else "it starts again: nothing was trained yet")
    if record["signal"] not in HANDED_OVER:
        log.warning("job interrupted: %s; if SLURM requeues it (a preemption), %s", record["reason"], then)
        sys.exit(EXIT_CODES[record["signal"]])
    log.warning("job interrupted: %s; requeueing it (%s)", record["reason"], then)
    try:
        hand_over(record["signal"])  # submitit's handler: `scontrol requeue`, then exits this process
    except Exception as err:  # submitit's UncompletedJobError: the job has used its max_num_timeout retries
        rest = (" with hydra.sweep.dir=<the sweep folder>: finished jobs are skipped, the others resume" if multirun
                else ": it resumes")
        reason = f"{record['reason']}, not requeued ({err}); run the same command again{rest} from last.ckpt"
        update_metrics(out, reason=reason)
        return _fail(multirun, "interrupted", reason, EXIT_CODES[record["signal"]])


def divergence_message(record: dict, out: Path) -> str:
    """What diverged, and the checkpoint to go back to (one that exists), or that none was written."""
    last = out / "checkpoints" / "last.ckpt"
    if last.is_file():
        iteration = torch.load(last, map_location="cpu", weights_only=True).get("iteration")
        keep = f"the last good checkpoint is {last} (iteration {iteration})"
    else:
        keep = "no checkpoint was written before it"
    return f"diverged: {record.get('reason') or 'non-finite values'}; {keep}"


def _fail(multirun: bool, status: str, message: str, code: int) -> None:
    """In a sweep the job's metrics.json says what happened and the sweep goes on (no value to the
    sweeper: Optuna records a FAIL trial); a single run says it in one line and exits with `code`."""
    if not multirun:
        print(f"ganexp: error: {message}", file=sys.stderr)  # no traceback (HYDRA_FULL_ERROR=1 has it)
        sys.exit(code)
    log.error("job %s: %s", status, message)


def _swept(grid: list[str]) -> list[str]:
    """The keys a multirun command line (with its `sweep=` grid) sweeps; [] for a single run."""
    if not any(a in ("-m", "--multirun") for a in grid):
        return []
    try:
        return sweep_keys([a for a in grid if not a.startswith("-")])
    except Exception:  # noqa: BLE001 - a command line Hydra cannot parse: Hydra says so next
        return []


def command_line(main: Callable[[], None], args: list[str]) -> int:
    """Check every job of the command line (before Hydra creates a folder), run `main` (the @hydra.main
    function), and the exit status; a sweep stopped by a signal or by Hydra still gets its summary."""
    hydra_flags = [a for a in args if a.startswith("-") and a not in ("-m", "--multirun")]
    grid = with_grid(args, CONF_DIR)  # a sweep's command line with its sweep= grid
    if not hydra_flags and not os.environ.get("HYDRA_FULL_ERROR"):
        try:  # compose and check every job before Hydra creates a run folder
            check_launcher(args)
            check_command_line(grid, CONF_DIR)
        except ConfigError as err:
            print(f"ganexp: error: {err}", file=sys.stderr)
            return 2
    os.environ[SWEPT] = ",".join(_swept(grid))  # inherited by every job, wherever its launcher runs it
    try:
        main()
    except SweepInterrupted as stop:  # a sweep's job was stopped by a signal: summarize what ran
        interrupted(str(stop))
    except SystemExit:  # Hydra reported an error and exits 1; a multirun whose jobs ran still gets its summary
        ended_without_summary()
        raise
    return exit_status()  # a multirun with a job that did not finish exits 1 (ganexp/sweeps/summary.py)
