"""Train a GAN: `python train.py [group=option ...] [key=value ...]` (see conf/train.yaml).

Exit status: 0 finished, 2 bad input (one line on stderr), 3 diverged (NaN/Inf loss;
the last good checkpoint is kept), 129 / 130 / 143 stopped by SIGHUP / SIGINT / SIGTERM (that
iteration checkpointed), 1 any other failure (metrics.json says why).
"""
from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ganexp.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent / "conf"
log = logging.getLogger("ganexp")


from ganexp.run.resume import register_resolvers  # noqa: E402

register_resolvers()  # before @hydra.main composes conf/hydra/default.yaml
_started: set[str] = set()  # run folders whose metrics.json this process set to "running"


def _task_overrides() -> list[str] | None:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # composed in code: no command line, every setting as composed
        return None


def train(cfg: DictConfig, overrides: list[str] | None = None) -> tuple[dict, dict]:
    """Check, build the parts from the composed config, fit, record the outcome in metrics.json.

    A resume (ckpt_path, or a last.ckpt already in the run folder) takes the experiment from the
    checkpoint and refuses overrides that change it (ganexp/run/resume.py); a finished run in the same
    folder is skipped. Returns (the run's metrics.json record, the built objects: cfg, datamodule,
    module, trainer; none when skipped), as lightning-hydra-template's train(cfg) does.
    """
    from ganexp.run import writes
    from ganexp.config.validate import check_config
    from ganexp.run.lock import folder_lock

    check_config(cfg)  # bad values fail here, before anything is built or written
    overrides = _task_overrides() if overrides is None else overrides
    writes.confine(cfg.paths.output_dir)  # nothing below it is written through a link...
    writes.check_tree(cfg.paths.output_dir)  # ...and a folder that holds one is refused before anything is written
    with folder_lock(cfg.paths.output_dir):  # one run per folder: a second one is refused (FolderInUse)
        return _train(cfg, overrides, Path(cfg.paths.output_dir))


def _train(cfg: DictConfig, overrides: list[str] | None, out: Path) -> tuple[dict, dict]:
    import pytorch_lightning as pl
    from ganexp.config.build import build_datamodule, build_module, build_trainer
    from ganexp.run import lifecycle
    from ganexp.run.resume import check_training_state, in_place_run, init_weights, mark_run, resume_config
    from ganexp.run.jobs import check_same_job
    from ganexp.run.results import read_metrics, update_metrics
    from ganexp.run.tensorboard import HParamsRow

    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # data is already a device tensor
    previous = read_metrics(out)  # unreadable: one line, and the file is left as it is
    last = out / "checkpoints" / "last.ckpt"
    source, asked_to_resume, checkpoint = None, bool(cfg.ckpt_path), None
    if previous.get("status") == "finished" and not asked_to_resume:  # re-run sweeps skip it...
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
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data)
    datamodule.setup("fit")  # a missing dataset fails here, before the run writes anything
    module = build_module(cfg)
    if cfg.ckpt_path:
        check_training_state(checkpoint, module, cfg.ckpt_path)  # the one read above; before anything is written
    if cfg.get("init_from"):
        init_weights(module, cfg.init_from)  # a new run from a checkpoint's or export's weights
    trainer = build_trainer(cfg)
    row = HParamsRow(overrides)  # TensorBoard's HParams row of this run, with its status
    trainer.callbacks.append(row)
    if trainer.is_global_zero:
        mark_run(out)
        fields = {"status": "running", "reason": None, "diverged_at": None}
        if source or cfg.get("init_from"):
            fields.update(resumed_from=source, init_from=cfg.get("init_from"))
        if cfg.ckpt_path and source is None:
            earlier = previous.get("resumes") if isinstance(previous.get("resumes"), list) else []
            fields["resumes"] = [*earlier, {"time": _now(), "overrides": overrides or []}]
        update_metrics(out, **fields)
        _started.add(str(out.resolve()))
    lifecycle.fit(trainer, module, datamodule, [(row, module)], ckpt_path=cfg.ckpt_path,
                  resumes_at=None if checkpoint is None else checkpoint["iteration"])
    record = lifecycle.finish(trainer, module, row, out)  # an interrupted run's row (a finished one has it from on_fit_end)
    return record, {"cfg": cfg, "datamodule": datamodule, "module": module, "trainer": trainer}


def divergence_message(record: dict, out: Path) -> str:
    """What diverged, and the checkpoint to go back to (one that exists), or that none was written."""
    import torch

    last = out / "checkpoints" / "last.ckpt"
    if last.is_file():
        iteration = torch.load(last, map_location="cpu", weights_only=True).get("iteration")
        keep = f"the last good checkpoint is {last} (iteration {iteration})"
    else:
        keep = "no checkpoint was written before it"
    return f"diverged: {record.get('reason') or 'non-finite values'}; {keep}"


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _record_failure(cfg: DictConfig, status: str, reason: str) -> None:
    """A failed job says why in its folder, unless the folder holds an earlier run this process did
    not start: a refused or failed resume leaves that run's record exactly as it was."""
    from ganexp.run.resume import is_run_folder
    from ganexp.run.results import update_metrics

    out = cfg.paths.output_dir
    if not out or not Path(out).is_dir():
        return
    if is_run_folder(out) and str(Path(out).resolve()) not in _started:
        return
    try:
        update_metrics(out, status=status, reason=reason)
    except ConfigError:  # an unreadable metrics.json stays as it is (it is evidence)
        pass


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ganexp.sweeps.launch import job_resources
    from ganexp.run.lock import FolderInUse
    from ganexp.run.results import sweeper_value
    from ganexp.run.writes import FolderRefused

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    # The pre-run check imported Lightning before Hydra set up logging, so Lightning gave its logger a
    # console handler of its own and stopped propagation: hand its lines to Hydra's handlers (train.log).
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    try:
        with job_resources(cfg):  # parallel sweeps: a share of the CPU threads, a GPU of its own
            record, _ = train(cfg)
    except (FolderInUse, FolderRefused) as err:  # the folder's record belongs to the run that holds it / nothing written
        return _fail(multirun, "refused", str(err), 2)
    except ConfigError as err:
        _record_failure(cfg, "failed", str(err))
        return _fail(multirun, "failed", str(err), 2)
    except Exception as err:
        _record_failure(cfg, "failed", f"{type(err).__name__}: {err}".splitlines()[0])
        if multirun:
            log.exception("job failed")
            return None
        raise
    if record.get("status") == "diverged":
        return _fail(multirun, "diverged", divergence_message(record, Path(cfg.paths.output_dir)), 3)
    if record.get("status") == "interrupted":
        from ganexp.run.signals import EXIT_CODES
        from ganexp.sweeps.summary import SweepInterrupted

        last = Path(cfg.paths.output_dir).resolve() / "checkpoints" / "last.ckpt"
        if multirun:  # no further jobs; train.py's __main__ writes the summary of those that ran
            log.error("job interrupted: %s", record["reason"])
            raise SweepInterrupted(record["signal"])
        then = (f"{last} holds it; resume with: python train.py ckpt_path={last}" if last.is_file()
                else "nothing was trained yet; run the same command again")
        print(f"ganexp: interrupted by {record['reason']}; {then}", file=sys.stderr)
        sys.exit(EXIT_CODES[record["signal"]])
    return sweeper_value(record)  # a number, or none (a failed trial)


def _fail(multirun: bool, status: str, message: str, code: int) -> None:
    """In a sweep the job's metrics.json says what happened and the sweep goes on (no value to the
    sweeper: Optuna records a FAIL trial); a single run says it in one line and exits with `code`."""
    if multirun:
        log.error("job %s: %s", status, message)
        return None
    print(f"ganexp: error: {message}", file=sys.stderr)  # no traceback (HYDRA_FULL_ERROR=1 has it)
    sys.exit(code)


if __name__ == "__main__":
    import os

    from ganexp.sweeps.launch import check_launcher
    from ganexp.sweeps.summary import SweepInterrupted, ended_without_summary, exit_status, interrupted, with_grid
    from ganexp.config.validate import check_command_line

    args = sys.argv[1:]
    hydra_flags = [a for a in args if a.startswith("-") and a not in ("-m", "--multirun")]
    if not hydra_flags and not os.environ.get("HYDRA_FULL_ERROR"):
        try:  # compose and check every job before Hydra creates a run folder
            check_launcher(args)
            check_command_line(with_grid(args, CONF_DIR), CONF_DIR)
        except ConfigError as err:
            print(f"ganexp: error: {err}", file=sys.stderr)
            sys.exit(2)
    try:
        main()
    except SweepInterrupted as stop:  # a sweep's job was stopped by a signal: summarize what ran
        interrupted(str(stop))
    except SystemExit:  # Hydra reported an error and exits 1; a multirun whose jobs ran still gets its summary
        ended_without_summary()
        raise
    sys.exit(exit_status())  # a multirun with a job that did not finish exits 1 (ganexp/sweeps/summary.py)
