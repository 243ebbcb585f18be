"""One run's lifecycle, for a plain run (`train`) and for each member of a stack (ganexp/sweeps/stacked.py):
check and lock its folder, mark it running, fit under the signal handlers, then the outcome (the final status,
derived here only), written to metrics.json and to the run's TensorBoard HParams row."""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ganexp.run.build import build_datamodule, build_module, build_trainer
from ganexp.run.validate import check_config
from ganexp.errors import ConfigError
from ganexp.io import writes
from ganexp.run.jobs import check_same_job
from ganexp.run.lock import folder_lock
from ganexp.io.results import read_metrics, update_metrics
from ganexp.run.resume import check_training_state, in_place_run, init_weights, is_run_folder, mark_run, resume_config
from ganexp.run.signals import StoppedBeforeTraining, outcome, stop_on_signals
from ganexp.run.tensorboard import HParamsRow

log = logging.getLogger("ganexp")
_started: set[str] = set()  # run folders whose metrics.json this process set to "running"


def train(cfg: DictConfig, overrides: list[str] | None = None) -> tuple[dict, dict]:
    """Check, build the parts from the composed config, fit, record the outcome in metrics.json.

    A resume (ckpt_path, or a last.ckpt already in the run folder) takes the experiment from the
    checkpoint and refuses overrides that change it (ganexp/run/resume.py); a finished run in the same
    folder is skipped. `overrides`: the command line's (None: every setting as composed). Returns (the
    run's metrics.json record, the built objects: cfg, datamodule, module, trainer; none when skipped),
    as lightning-hydra-template's train(cfg) does.
    """
    check_config(cfg)  # bad values fail here, before anything is built or written
    writes.confine(cfg.paths.output_dir)  # nothing below it is written through a link...
    writes.check_tree(cfg.paths.output_dir)  # ...and a folder that holds one is refused before anything is written
    with folder_lock(cfg.paths.output_dir):  # one run per folder: a second one is refused (FolderInUse)
        return _train(cfg, overrides, Path(cfg.paths.output_dir))


def _train(cfg: DictConfig, overrides: list[str] | None, out: Path) -> tuple[dict, dict]:
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # data is already a device tensor
    previous = read_metrics(out)  # unreadable: one line, and the file is left as it is
    last = out / "checkpoints" / "last.ckpt"
    source, checkpoint = None, None
    if previous.get("status") == "finished" and not cfg.ckpt_path:  # re-run sweeps skip it...
        check_same_job(out, overrides)  # ...when it is the same job; other settings are refused
        log.info("%s already finished; skipping", out)
        return previous, {}
    if cfg.ckpt_path or last.is_file():  # ...a re-run in the same folder resumes it where it stopped
        if not cfg.ckpt_path:
            cfg.ckpt_path = str(last)
        cfg, checkpoint = resume_config(cfg, overrides)  # the checkpoint's experiment, or one line refusing
        log.info("resuming from %s", cfg.ckpt_path)
        if in_place_run(cfg.ckpt_path) != out.resolve():
            source = str(Path(cfg.ckpt_path).resolve())  # a checkpoint from elsewhere: a new run folder
    datamodule, module = build_run(cfg)
    if cfg.ckpt_path:
        check_training_state(checkpoint, module, cfg.ckpt_path)  # the one read above; before anything is written
    if cfg.get("init_from"):
        init_weights(module, cfg.init_from)  # a new run from a checkpoint's or export's weights
    trainer = build_trainer(cfg)
    row = HParamsRow(overrides)  # TensorBoard's HParams row of this run, with its status
    trainer.callbacks.append(row)
    if trainer.is_global_zero:
        fields = {}
        if source or cfg.get("init_from"):
            fields.update(resumed_from=source, init_from=cfg.get("init_from"))
        if cfg.ckpt_path and source is None:
            earlier = previous.get("resumes") if isinstance(previous.get("resumes"), list) else []
            fields["resumes"] = [*earlier, {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "overrides": overrides or []}]
        start(out, **fields)
    fit(trainer, module, datamodule, [(row, module)], ckpt_path=cfg.ckpt_path,
        resumes_at=None if checkpoint is None else checkpoint["iteration"])
    record = finish(trainer, module, row, out)  # an interrupted run's row (a finished one has it from on_fit_end)
    return record, {"cfg": cfg, "datamodule": datamodule, "module": module, "trainer": trainer}


def build_run(cfg: DictConfig) -> tuple[Any, Any]:
    """The run's datamodule (set up) and GANModule, seeded: a plain run and each stack member draw the same
    numbers in the same order here. A missing dataset fails now, before the run writes anything."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data)
    datamodule.setup("fit")
    return datamodule, build_module(cfg)


def start(out: Path, **fields) -> None:
    """The folder becomes a run folder whose metrics.json says "running" (on rank 0, before fit)."""
    mark_run(out)
    update_metrics(out, status="running", reason=None, signal=None, diverged_at=None, **fields)
    _started.add(str(out.resolve()))


def lightning_logs_to_hydra() -> None:
    """Lightning was imported before Hydra set up logging, so it gave its loggers a console handler of their
    own and stopped propagation: hand their lines to Hydra's handlers (train.log)."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def record_failure(out: str | None, status: str, reason: str) -> None:
    """A failed job says why in its folder, unless the folder holds an earlier run this process did
    not start: a refused or failed resume leaves that run's record exactly as it was."""
    if not out or not Path(out).is_dir() or (is_run_folder(out) and str(Path(out).resolve()) not in _started):
        return
    with contextlib.suppress(ConfigError):  # an unreadable metrics.json stays as it is (it is evidence)
        update_metrics(out, status=status, reason=reason)


def fit(trainer, module, datamodule, runs: list[tuple[Any, Any]], ckpt_path: str | None = None,
        resumes_at: int | None = None) -> None:
    """trainer.fit(module) under ganexp's signal handlers (Ctrl-C / SIGTERM: finish the iteration, checkpoint
    it, stop). `runs`: (HParams row, member module) of every run it trains, whose rows say "failed" if fit
    raises. `resumes_at`: the iteration a resume starts from, kept when a signal comes before it was read."""
    try:
        with stop_on_signals(module):  # (which raises StoppedBeforeTraining for a signal kept from before it)
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:  # Lightning's way out of fit after SIGTERM; the handler above recorded it
        module.request_stop("SIGTERM")
    except StoppedBeforeTraining as stop:  # a signal during setup: nothing to finish or checkpoint
        if resumes_at is not None:
            module.iteration = max(module.iteration, resumes_at)
        module.request_stop(stop.signal_name)
    except Exception:  # a failed run still gets its HParams row, so the table shows the failure
        for row, run in runs:
            row.write_after(trainer, run, {"status": "failed", "iteration": run.iteration})
        raise


def finish(trainer, module, row, out: str | Path) -> dict:
    """The run's outcome into its metrics.json (rank 0) and its HParams row (if on_fit_end did not write it)."""
    fields = outcome(module)
    if fields["status"] == "interrupted" and trainer.is_global_zero:  # each stop of the run, kept across attempts
        earlier = read_metrics(out).get("interruptions")
        fields["interruptions"] = [*(earlier if isinstance(earlier, list) else []),
                                   {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "signal": fields["signal"],
                                    "iteration": fields["iteration"]}]
    record = update_metrics(out, **fields) if trainer.is_global_zero else fields
    row.write_after(trainer, module, record)
    return record
