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

CONF_DIR = Path(__file__).resolve().parent / "conf"
log = logging.getLogger("ganexp")


def run_dir(ckpt_path: str | None, default: str) -> str:
    """Resuming from <run>/checkpoints/last.ckpt continues in <run>; otherwise a new folder."""
    return str(Path(ckpt_path).resolve().parent.parent) if ckpt_path else default


OmegaConf.register_new_resolver("ganexp_run_dir", run_dir, replace=True)


class Diverged(RuntimeError):
    pass


def train(cfg: DictConfig, return_module: bool = False):
    """Check, build the parts from the composed config, fit, record the outcome in metrics.json.

    Returns the monitored metric (for Hydra sweepers), or the module when `return_module`.
    """
    import pytorch_lightning as pl

    from ganexp.build import build_module, build_trainer
    from ganexp.results import read_metrics, update_metrics
    from ganexp.sample import load_checkpoint
    from ganexp.validate import check_config

    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # data is already a device tensor
    check_config(cfg)  # bad values fail here, before anything is built or written
    out = Path(cfg.paths.output_dir)
    previous = read_metrics(out)
    if previous.get("status") == "finished" and not cfg.ckpt_path and not return_module:  # re-run sweeps skip it
        log.info("%s already finished; skipping", out)
        return _monitored(previous)
    last = out / "checkpoints" / "last.ckpt"
    if not cfg.ckpt_path and last.is_file():  # ...and resumes unfinished ones where they stopped
        log.info("resuming from %s", last)
        cfg.ckpt_path = str(last)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")  # a missing dataset fails here, before the run writes anything
    if cfg.ckpt_path:
        load_checkpoint(cfg.ckpt_path)  # unreadable or truncated: one line, nothing touched
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    if trainer.is_global_zero:
        update_metrics(out, status="running", reason=None, diverged_at=None)
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


def _monitored(record: dict) -> float | None:
    """The metric a sweeper optimizes: the best value of `monitor` (else its final value)."""
    monitor = record.get("monitor")
    value = record.get("best", {}).get(monitor, record.get("final", {}).get(monitor))
    return float(value) if value is not None else None


def _record_failure(cfg: DictConfig, status: str, reason: str) -> None:
    from ganexp.results import update_metrics

    out = cfg.paths.output_dir
    if out and Path(out).is_dir():  # Hydra made the run folder; a failed job says why in it
        update_metrics(out, status=status, reason=reason)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ganexp.errors import ConfigError
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

    from ganexp.errors import ConfigError
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
