"""Run folders: the marker that makes a folder a ganexp run, where a resume runs (in place only for
`<run>/checkpoints/last.ckpt` of a marked run), and the resolvers conf/hydra/default.yaml names folders with."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ganexp import __version__

from ganexp.io import writes
from ganexp.run.jobs import job_dir

RUN_MARKER = ".ganexp-run"


def mark_run(run_dir: str | Path) -> None:
    """Make `run_dir` recognisable as a ganexp run folder (the only thing in-place resume trusts)."""
    path = Path(run_dir) / RUN_MARKER
    if not path.is_file():
        writes.replace_text(path, json.dumps({"ganexp": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def is_run_folder(path: str | Path) -> bool:
    return (Path(path) / RUN_MARKER).is_file()


def in_place_run(ckpt_path: Any) -> Path | None:
    """The run folder a checkpoint path resumes in: only `<run>/checkpoints/last.ckpt` of a marked run."""
    if not ckpt_path:
        return None
    path = Path(str(ckpt_path)).expanduser()
    if path.name == "last.ckpt" and path.parent.name == "checkpoints" and is_run_folder(path.parent.parent):
        return path.parent.parent.resolve()
    return None


def run_dir(ckpt_path: Any, default: str) -> str:
    """Hydra's run folder (conf/hydra/default.yaml): the checkpoint's run when it resumes in place."""
    return str(in_place_run(ckpt_path) or default)


def hydra_subdir(output_dir: str) -> str:
    """`.hydra`, unless the folder already has one: then this attempt's copy goes beside it."""
    if (Path(output_dir) / ".hydra" / "config.yaml").is_file():
        return f".hydra/attempts/{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}"
    return ".hydra"


def _sweep_dir(output_dir: str) -> str | None:
    """The sweep folder a run's folder is a job of (None: a run of its own, or a config composed in code)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    sweep = str(HydraConfig.get().sweep.dir)
    return sweep if Path(os.path.abspath(output_dir)).is_relative_to(os.path.abspath(sweep)) else None


def experiment_name(output_dir: str) -> str:
    """MLflow's experiment for a run (conf/logger/mlflow.yaml): its sweep folder, every job of a sweep in one;
    "runs" for a run of its own."""
    return _sweep_dir(output_dir) or "runs"


def run_name(output_dir: str) -> str:
    """MLflow's name for a run: a sweep job's folder within the sweep (its swept values first), else the run folder."""
    sweep = _sweep_dir(output_dir)
    return os.path.relpath(os.path.abspath(output_dir), os.path.abspath(sweep)) if sweep else str(output_dir)


def mlflow_store() -> str:
    """The local MLflow store: outputs/mlruns where train.py runs (Hydra does not change the folder)."""
    return os.path.abspath(os.path.join("outputs", "mlruns"))


def register_resolvers() -> None:
    """The resolvers conf/hydra/default.yaml uses (train.py calls this before Hydra composes)."""
    OmegaConf.register_new_resolver("ganexp_run_dir", run_dir, replace=True)
    OmegaConf.register_new_resolver("ganexp_hydra_subdir", hydra_subdir, replace=True)
    OmegaConf.register_new_resolver("ganexp_job_dir", job_dir, replace=True)
    OmegaConf.register_new_resolver("ganexp_experiment", experiment_name, replace=True)
    OmegaConf.register_new_resolver("ganexp_run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("ganexp_mlflow_store", mlflow_store, replace=True)
