"""Composed config → built parts, every one through ganexp.config.registry.build (no `instantiate`)."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.environments import SLURMEnvironment

from ganexp.errors import ConfigError
from ganexp.gan.augment import DiffAugment
from ganexp.gan.module import GANModule
from ganexp.gan.noise import InstanceNoise, LatentPrior
from ganexp.config.registry import build, cannot_build, require
from ganexp.io.results import mlflow_run
from ganexp.run.signals import managed

# Lightning's advice on every machine with SLURM's commands (a login node) when a Trainer is built outside a
# SLURM job: a run started there without srun is meant to run there, and its one-line errors stay one line.
warnings.filterwarnings("ignore", "The `srun` command is available on your system but is not used")


PARTS = ("model", "data", "loss", "optimizer", "noise", "augment")  # the config groups build_parts reads


def plain(cfg: DictConfig | dict) -> dict[str, Any]:
    """The resolved config as plain Python containers (safe for torch.load(weights_only=True))."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def build_prior(noise: Any) -> LatentPrior:
    return LatentPrior(noise["prior"], noise["latent_dim"])


def build_datamodule(data: Any, source: str = "the config", **extra: Any):
    return build(data, "data", key="data", source=source, **extra)


def build_parts(config: dict) -> dict[str, Any]:
    """Every part of a GANModule but the optimizers' parameters; each constructor checks its own values."""
    noise = config["noise"]
    return {
        # a checkpoint from before augment existed has none
        "augment": DiffAugment((config.get("augment") or {}).get("policy", ()), config["data"]["shape"]),
        "loss": build(config["loss"], "loss", key="loss"),
        "prior": build_prior(noise),
        "instance_noise": InstanceNoise(noise["instance_sigma"], noise["instance_sigma_min"], noise["anneal"],
                                        noise["anneal_epochs"], noise.get("anneal_per", "epoch")),
        "generator": build(config["model"]["generator"], "generator", key="model.generator"),
        "discriminator": build(config["model"]["discriminator"], "discriminator", key="model.discriminator"),
        "optimizer_g": build(config["optimizer"]["g"], "optimizer", key="optimizer.g"),
        "optimizer_d": build(config["optimizer"]["d"], "optimizer", key="optimizer.d"),
    }


def build_cheap_parts(cfg: DictConfig) -> dict[str, Any]:
    """Build what a run builds before any data is read: the command line's checks (validate.py).
    The networks are built on torch's meta device (shapes, no memory), so a size the machine cannot
    hold is refused by its estimate, not by the allocator; returns the parts."""
    import torch
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    config = {k: plain(cfg[k]) for k in PARTS if k in cfg}  # paths resolve only in a run
    with torch.device("meta"):
        parts = build_parts(config)
    parts["data"] = build_datamodule(config["data"])  # its constructor only: setup() reads the data
    trainer = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=False).items() if k != "default_root_dir"}
    trainer = OmegaConf.to_container(OmegaConf.create(trainer), resolve=True)
    quiet = logging.getLogger("pytorch_lightning")
    level, quiet.level = quiet.level, logging.WARNING  # not its "GPU available" lines, once per job of a sweep
    # The trainer is built once, with its arguments only (no callbacks, logger or folder): they are Lightning's
    # rules, and Lightning says an argument is bad with its MisconfigurationException, a ValueError
    # (trainer.precision=foo) or an ImportError (an accelerator whose package is missing): bad input here too.
    try:
        build(trainer, "trainer", key="trainer", logger=False)
    except ConfigError:
        raise
    except (MisconfigurationException, ValueError, ImportError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise cannot_build("", "trainer", trainer.get("_target_"), first) from None
    finally:
        quiet.level = level
    return parts


def build_module(cfg: DictConfig) -> GANModule:
    config = plain(cfg)
    return GANModule(
        **build_parts(config),
        **{k: config[k] for k in ("d_steps", "log_every", "n_fixed", "seed")},
        config=config,
        ema_decay=(config.get("ema") or {}).get("decay", 0.0),
        ema_start=(config.get("ema") or {}).get("start", 0),
        reuse_fake=config.get("reuse_fake", False),
    )


def build_callbacks(config: dict) -> list:
    """A run's callbacks (conf/callbacks and eval), the checkpoint last, so last.ckpt holds what every
    other callback did in the same iteration."""
    from ganexp.callbacks.checkpoint import PeriodicCheckpoint

    callbacks = [build(c, "callback", key=f"callbacks.{name}") for name, c in (config.get("callbacks") or {}).items()]
    if config.get("eval"):  # eval=none switches metrics off
        callbacks.append(build(config["eval"], "callback", key="eval"))
    callbacks.sort(key=lambda c: isinstance(c, PeriodicCheckpoint))
    return callbacks


def logger_parts(logger: Any) -> dict[str, Any]:
    """key -> the config of each logger a `logger` node describes: one option's (`logger`), or logger=many's
    named ones (`logger.mlflow`, ...); {} for logger=none."""
    if not isinstance(logger, (dict, DictConfig)) or not logger:
        return {}
    if "_target_" in logger:
        return {"logger": logger}
    return {f"logger.{name}": part for name, part in logger.items() if isinstance(part, (dict, DictConfig))}


def check_loggers(cfg: DictConfig) -> None:
    """Each chosen logger's package is installed (logger=mlflow without mlflow: one line naming the extra)."""
    for key, part in logger_parts(cfg.get("logger")).items():
        require(part.get("_target_"), key)


def build_logger(config: dict):
    """The run's loggers (a list; False for logger=none). MLflow's: mlflow_arguments."""
    out = Path(config["paths"]["output_dir"]) if config.get("paths") else None
    loggers = []
    for key, part in logger_parts(config.get("logger")).items():
        if part.get("_target_") == "pytorch_lightning.loggers.MLFlowLogger":
            part = {**part, **mlflow_arguments(part, out)}
        loggers.append(build(part, "logger", key=key))
    return loggers or False


def mlflow_arguments(part: dict, out: Path | None) -> dict[str, Any]:
    """MLFlowLogger's store, and its run when the run folder's metrics.json names one for this tracking URI (a
    resume appends to it; ganexp/run/tensorboard.py keeps it): `tracking_uri` null is the local store in
    `save_dir` (sqlite, its artifacts beside it)."""
    found = {}
    if not part.get("tracking_uri"):
        store = Path(part.get("save_dir") or "outputs/mlruns").expanduser().resolve()
        store.mkdir(parents=True, exist_ok=True)
        found = {"tracking_uri": f"sqlite:///{store / 'mlflow.db'}",
                 "artifact_location": part.get("artifact_location") or (store / "artifacts").as_uri()}
    uri = found.get("tracking_uri", part.get("tracking_uri"))
    if out is not None and not part.get("run_id") and (run_id := mlflow_run(out, uri)):
        found["run_id"] = run_id
    return found


def build_trainer(cfg: DictConfig):
    """The run's Trainer; in a SLURM job of submitit's with Lightning's SLURM requeue off: submitit owns
    requeueing there (hydra/launcher=slurm, ganexp/run/signals.py), and two owners would requeue one job twice.
    A run of your own sbatch script keeps Lightning's (SIGUSR1: checkpoint and requeue)."""
    config = plain(cfg)
    own = SLURMEnvironment.detect() and managed()
    cluster = {"plugins": [SLURMEnvironment(auto_requeue=False)]} if own else {}
    return build(config["trainer"], "trainer", key="trainer", callbacks=build_callbacks(config),
                 logger=build_logger(config), **cluster)
