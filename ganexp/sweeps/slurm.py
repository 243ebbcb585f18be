"""`hydra/launcher=slurm`: Hydra's submitit launcher (a job array, one task per job), and what a sweep on a real
cluster needs beyond it:

- job states from `squeue` where accounting is off (no slurmdbd: `sacct` fails, and submitit would warn on
  every poll and wait forever for a job that died without a result), said once;
- a job that ends without a result (a node failure, a kill, its retries used up) is one failed job of the
  sweep, said in one line with its log, not an exception that loses the summary of every other job.

A timeout or a preemption is handled inside each job (ganexp/run/signals.py: SIGUSR2 stops the run as SIGTERM
does, then submitit requeues it and the next attempt resumes from its last.ckpt).
"""
from __future__ import annotations

import copy
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import submitit
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf, open_dict
from submitit.slurm.slurm import SlurmInfoWatcher

from ganexp.errors import ConfigError
from ganexp.io import writes
from ganexp.io.results import read_metrics, update_metrics

log = logging.getLogger("ganexp")
SQUEUE_FIELDS = "JobID|State|NodeList"  # sacct's header, which submitit's reader expects
LEFT = "LEFT_QUEUE"  # no longer in squeue: ended (and forgotten after slurmctld's MinJobAge)
# squeue's states of a job that has not ended which submitit's list of unfinished (sacct) states lacks
ACTIVE = {"CONFIGURING", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "SUSPENDED"}


class Watcher(SlurmInfoWatcher):
    """submitit's sacct poller, falling back to squeue (one call for all of the user's jobs) when sacct fails."""

    accounting: bool | None = None  # None: not asked yet

    def update(self) -> None:
        if self.accounting is None and self._registered:
            try:
                probe = subprocess.run(["sacct", "--noheader", "-X", "-S", "now"], capture_output=True, text=True)
                self.accounting, why = probe.returncode == 0, (probe.stderr.strip().splitlines() or ["no output"])[0]
            except OSError as err:  # no sacct on this machine at all
                self.accounting, why = False, err.strerror or type(err).__name__
            if not self.accounting:
                log.info("sacct fails on this cluster (%s): job states come from squeue", why)
        super().update()

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        if command is None or self.accounting is not False:
            return command
        return ["squeue", "--noheader", "--array", "--states=all", f"--user={os.getuid()}",  # not $USER: it may lie
                "--format=%i|%T|%N"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if self.accounting is not False:
            return super().read_info(string)
        text = string.decode() if isinstance(string, bytes) else string
        info = super().read_info("\n".join([SQUEUE_FIELDS, *text.splitlines()]))
        for stats in info.values():
            stats["State"] = "RUNNING" if stats.get("State") in ACTIVE else stats.get("State", "UNKNOWN")
        for job_id in self._registered - self._finished:  # asked for, gone from the queue: it ended
            info.setdefault(job_id, {"JobID": job_id, "State": LEFT, "NodeList": ""})
        return info


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    """Submit the sweep as one job array, then each job's return as it ends, in order."""
    params = dict(launcher.params)
    folder = params.pop("submitit_folder")
    executor = submitit.AutoExecutor(cluster="slurm", folder=folder, slurm_max_num_timeout=params.pop("max_num_timeout"),
                                     slurm_python=f"{shlex.quote(sys.executable)} -u -m ganexp.run.slurm_job")
    common = set(OmegaConf.structured(BaseQueueConf).keys())  # submitit's names for every cluster; the rest slurm_*
    executor.update_parameters(**{k if k in common else f"slurm_{k}": v for k, v in params.items()})
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if "mode" in launcher.config.hydra.sweep:  # hydra.sweep.mode, as Hydra's own launchers apply it
        os.chmod(sweep_dir, int(str(launcher.config.hydra.sweep.mode), 8))
    log.info("SLURM sweep of %d jobs in %s", len(job_overrides), sweep_dir)
    args = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    jobs = executor.map_array(launcher, *zip(*args))
    for link in Path(folder).parent.glob(".submission_file_*.sh"):  # submitit's links to the submitted script:
        if link.is_symlink():  # not needed once submitted, and a sweep folder holding a link is refused on a re-run
            link.unlink()
    watcher = Watcher(delay_s=60)
    for job in jobs:
        job.watcher = watcher  # this sweep's poller, for these jobs only
        watcher.register_job(job.job_id)
    log.info("submitted SLURM job array %s; waiting for its jobs (squeue shows them; each job's log is in %s)",
             jobs[0].job_id.split("_")[0], Path(folder).parent)
    return [_result(launcher, job, overrides) for job, overrides in zip(jobs, job_overrides)]


def _result(launcher, job: Any, overrides: Sequence[str]) -> JobReturn:
    """The job's return; a job that ended without one (a node failure, scancel, its retries used up) is said in
    one line, recorded `failed` in its folder (made if it never started) so the sweep's summary counts it, and
    returned as a trial with no value, as a failed job is (ganexp/cli.py), so the sweep goes on."""
    try:
        return job.results()[0]
    except Exception:  # noqa: BLE001 - submitit's UncompletedJobError, or the job's own error, pickled
        state = job.watcher.get_state(job.job_id, mode="cache")
        log_file = Path(job.paths.stdout)
        said = f"its log: {log_file}" if log_file.is_file() else "it never started"
        reason = f"SLURM job {job.job_id} ended without a result (state {state}); {said}"
        log.error("%s (%s)", reason, " ".join(filter_overrides(overrides)))
        try:
            _record_lost(launcher, overrides, reason)
        except (ConfigError, OSError) as err:  # an unreadable record, a refused link: said, the sweep goes on
            log.error("cannot record it in its folder: %s", err)
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None)


def _record_lost(launcher, overrides: Sequence[str], reason: str) -> None:
    """metrics.json `failed` with the reason, unless the job recorded how it ended (interrupted, diverged, ...)."""
    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
    folder = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
    if read_metrics(folder).get("status") not in (None, "running"):
        return
    writes.make_dirs(folder / ".hydra")
    if not (folder / ".hydra" / "overrides.yaml").is_file():  # a job folder to the summary, as Hydra writes it
        task = copy.deepcopy(cfg)
        with open_dict(task):
            del task["hydra"]
        writes.replace_text(folder / ".hydra" / "config.yaml", OmegaConf.to_yaml(task))
        writes.replace_text(folder / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    update_metrics(folder, status="failed", reason=reason)
