"""Train a GAN: `python train.py [group=option ...] [key=value ...]` (see conf/train.yaml).

Exit status: 0 finished, 2 bad input (one line on stderr), 3 diverged (NaN/Inf loss;
the last good checkpoint is kept), 1 any other failure (metrics.json says why).
"""
from __future__ import annotations

import logging
import math
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ganexp.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent / "conf"
log = logging.getLogger("ganexp")


from ganexp.resume import hydra_subdir, run_dir  # noqa: E402

OmegaConf.register_new_resolver("ganexp_run_dir", run_dir, replace=True)
OmegaConf.register_new_resolver("ganexp_hydra_subdir", hydra_subdir, replace=True)
_started: set[str] = set()  # run folders whose metrics.json this process set to "running"


class Diverged(RuntimeError):
    pass


def _task_overrides() -> list[str] | None:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # composed in code: no command line, every setting as composed
        return None


def train(cfg: DictConfig, return_module: bool = False, overrides: list[str] | None = None):
    """Check, build the parts from the composed config, fit, record the outcome in metrics.json.

    A resume (ckpt_path, or a last.ckpt already in the run folder) takes the experiment from the
    checkpoint and refuses overrides that change it (ganexp/resume.py). Returns the monitored
    metric (for Hydra sweepers), or the module when `return_module`.
    """
    import pytorch_lightning as pl

    from ganexp.build import build_datamodule, build_module, build_trainer
    from ganexp.resume import in_place_run, init_weights, mark_run, resume_config
    from ganexp.results import read_metrics, update_metrics
    from ganexp.validate import check_config

    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # data is already a device tensor
    check_config(cfg)  # bad values fail here, before anything is built or written
    overrides = _task_overrides() if overrides is None else overrides
    out = Path(cfg.paths.output_dir)
    previous = read_metrics(out)  # unreadable: one line, and the file is left as it is
    last = out / "checkpoints" / "last.ckpt"
    source, asked_to_resume = None, bool(cfg.ckpt_path)
    if cfg.ckpt_path or last.is_file():  # ...a re-run in the same folder resumes it where it stopped
        if not cfg.ckpt_path:
            cfg.ckpt_path = str(last)
        cfg, _ = resume_config(cfg, overrides)
        if previous.get("status") != "finished" or asked_to_resume:
            log.info("resuming from %s", cfg.ckpt_path)  # the checkpoint's experiment, or one line refusing
        if in_place_run(cfg.ckpt_path) != out.resolve():
            source = str(Path(cfg.ckpt_path).resolve())  # a checkpoint from elsewhere: a new run folder
    if previous.get("status") == "finished" and not asked_to_resume and not return_module:  # re-run sweeps skip it
        log.info("%s already finished; skipping", out)
        return _monitored(previous)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data)
    datamodule.setup("fit")  # a missing dataset fails here, before the run writes anything
    module = build_module(cfg)
    if cfg.get("init_from"):
        init_weights(module, cfg.init_from)  # a new run from a checkpoint's or export's weights
    trainer = build_trainer(cfg)
    if trainer.is_global_zero:
        mark_run(out)
        fields = {"status": "running", "reason": None, "diverged_at": None}
        if source or cfg.get("init_from"):
            fields.update(resumed_from=source, init_from=cfg.get("init_from"))
        if cfg.ckpt_path and source is None:
            fields["resumes"] = [*previous.get("resumes", []), {"time": _now(), "overrides": overrides or []}]
        update_metrics(out, **fields)
        _started.add(str(out.resolve()))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    if trainer.is_global_zero:
        if module.diverged_at is not None:
            update_metrics(out, status="diverged", iteration=module.iteration, diverged_at=module.diverged_at,
                           reason=f"non-finite loss at iteration {module.diverged_at}")
        else:
            update_metrics(out, status="finished", iteration=module.iteration)
    if return_module:
        return module
    if module.diverged_at is not None:
        raise Diverged(f"diverged at iteration {module.diverged_at} (NaN/Inf loss); "
                       f"the last good checkpoint is in {out / 'checkpoints'}")
    return _monitored(read_metrics(out))


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _monitored(record: dict) -> float | None:
    """The metric a sweeper optimizes: the best value of `monitor` (else its final value)."""
    monitor = record.get("monitor")
    value = record.get("best", {}).get(monitor, record.get("final", {}).get(monitor))
    return float(value) if value is not None else None


def _record_failure(cfg: DictConfig, status: str, reason: str) -> None:
    """A failed job says why in its folder, unless the folder holds an earlier run this process did
    not start: a refused or failed resume leaves that run's record exactly as it was."""
    from ganexp.resume import is_run_folder
    from ganexp.results import update_metrics

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

    from ganexp.launch import job_resources

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        with job_resources(cfg):  # parallel sweeps: a share of the CPU threads, a GPU of its own
            return train(cfg)
    except (ConfigError, Diverged) as err:
        status, code = ("failed", 2) if isinstance(err, ConfigError) else ("diverged", 3)
        if isinstance(err, ConfigError):
            _record_failure(cfg, status, str(err))
        if multirun:  # the sweep goes on; the job's metrics.json says what happened
            log.error("job %s: %s", status, err)
            return math.nan
        print(f"ganexp: error: {err}", file=sys.stderr)  # no traceback (HYDRA_FULL_ERROR=1 has it)
        sys.exit(code)
    except Exception as err:
        _record_failure(cfg, "failed", f"{type(err).__name__}: {err}".splitlines()[0])
        if multirun:
            log.exception("job failed")
            return math.nan
        raise


if __name__ == "__main__":
    import os

    from ganexp.launch import check_launcher
    from ganexp.sweep import exit_status, with_grid
    from ganexp.validate import check_command_line

    args = sys.argv[1:]
    hydra_flags = [a for a in args if a.startswith("-") and a not in ("-m", "--multirun")]
    if not hydra_flags and not os.environ.get("HYDRA_FULL_ERROR"):
        try:  # compose and check every job before Hydra creates a run folder
            check_launcher(args)
            check_command_line(with_grid(args, CONF_DIR), CONF_DIR)
        except ConfigError as err:
            print(f"ganexp: error: {err}", file=sys.stderr)
            sys.exit(2)
    main()
    sys.exit(exit_status())  # a multirun with a job that did not finish exits 1 (ganexp/sweep.py)
