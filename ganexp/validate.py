"""Bad input → one line that names the key, the bad value and what is allowed.

`check_config` runs on a composed config before anything is built or written.
`check_command_line` composes the command line's overrides itself first, so that
Hydra's multi-line composition errors (unknown option, typo'd key) come out as one
line too, and a sweep is checked job by job before its first job starts.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from ganexp.errors import ConfigError
from ganexp.losses import LOSSES
from ganexp.noise import ANNEALS, PRIORS

_INT, _FLOAT = "an integer", "a number"

# key, kind, predicate, what is allowed
RULES: list[tuple[str, str, Callable[[Any], bool], str]] = [
    ("seed", _INT, lambda v: True, "any integer"),
    ("d_steps", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("batch_size", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("log_every", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("image_every", _INT, lambda v: v >= 0, "an integer >= 0 (0 = only at the end)"),
    ("ckpt_every", _INT, lambda v: v >= 0, "an integer >= 0 (0 = only at the end)"),
    ("n_fixed", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("eval_every", _INT, lambda v: v >= 0, "an integer >= 0 (0 = only at the end)"),
    ("eval.n", _INT, lambda v: v >= 10, "an integer >= 10 (the default is 2000)"),
    ("eval.n_final", _INT, lambda v: v >= 10, "an integer >= 10 (the default is 10000)"),
    ("eval.batch_size", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("noise.latent_dim", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("noise.instance_sigma", _FLOAT, lambda v: v >= 0, "a number >= 0 (0 = off)"),
    ("noise.instance_sigma_min", _FLOAT, lambda v: v >= 0, "a number >= 0"),
    ("noise.anneal_epochs", _INT, lambda v: v >= 1, "an integer >= 1"),
    ("loss.label_smoothing", _FLOAT, lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("loss.gp_weight", _FLOAT, lambda v: v >= 0, "a number >= 0"),
    ("optimizer.lr", _FLOAT, lambda v: v > 0, "a number > 0, e.g. 2e-4"),
    ("optimizer.g.lr", _FLOAT, lambda v: v > 0, "a number > 0, e.g. 2e-4"),
    ("optimizer.d.lr", _FLOAT, lambda v: v > 0, "a number > 0, e.g. 2e-4"),
    ("trainer.max_epochs", _INT, lambda v: v >= 1 or v == -1, "an integer >= 1 (or -1: no limit)"),
]
IMAGE_METRICS = ("fid", "kid", "is", "coverage", "class_kl", "precision", "recall")
TOY_METRICS = ("swd", "modes", "hq", "residual")
INITS = ("default", "xavier", "kaiming")
CHOICES = {"noise.prior": PRIORS, "noise.anneal": ANNEALS, "loss.name": tuple(LOSSES),
           "model.generator.init": INITS, "model.discriminator.init": INITS}


def _typed(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind == _INT else isinstance(value, (int, float))


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first bad value or nonsensical combination in `cfg`."""
    for key, kind, ok, allowed in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        if not _typed(value, kind):
            raise ConfigError(f"{key}={value} is not {kind}; use {allowed}")
        if not ok(value):
            raise ConfigError(f"{key}={value} is out of range; use {allowed}")
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and value not in allowed:
            raise ConfigError(f"{key}={value} is not allowed; choose one of {', '.join(allowed)}")
    loss = cfg.loss
    if loss.label_smoothing and not LOSSES[loss.name].has_targets:
        raise ConfigError(f"loss.label_smoothing={loss.label_smoothing} has no meaning for loss={loss.name} "
                          "(it has no targets); drop it or use loss=nonsaturating, minimax or lsgan")
    shape = list(cfg.data.shape)
    monitor = OmegaConf.select(cfg, "eval.monitor", default="auto")
    allowed = TOY_METRICS if len(shape) == 1 else IMAGE_METRICS
    if monitor != "auto" and monitor not in allowed:
        raise ConfigError(f"eval.monitor={monitor} is not a metric of this data; choose auto or one of {', '.join(allowed)}")
    if "dcgan" in str(cfg.model.generator.get("_target_", "")) and len(shape) != 3:
        raise ConfigError(f"model=dcgan needs images, but the data is {shape}-shaped; "
                          "use model=toy_mlp or model=mlp with data=toy")


def check_multirun(cfg: DictConfig) -> None:
    """`-m` with DDP would re-launch the whole sweep in every DDP process."""
    strategy, devices = str(cfg.trainer.get("strategy", "auto")), cfg.trainer.get("devices", 1)
    if "ddp" in strategy or (isinstance(devices, int) and devices > 1):
        raise ConfigError(f"-m (multirun) with DDP (trainer.strategy={strategy}, trainer.devices={devices}) "
                          "re-runs the whole sweep in each process; sweep with one device per job, or drop -m")


def _group_options(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def _one_line(err: Exception, job: list[str], conf_dir: Path, compose) -> str:
    """Hydra's composition errors, rewritten as one line that names the override and the fix."""
    text = str(err)
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing:  # unknown option of a config group
        group, option = missing.groups()
        return f"{group}={option} is not an option of {group}; choose one of {', '.join(_group_options(conf_dir, group))}"
    bad_key = re.search(r"Could not override '([^']+)'", text)
    if bad_key:  # a key that does not exist (typo)
        key = bad_key.group(1)
        parent = key.rpartition(".")[0]
        base = compose([o for o in job if o.split("=", 1)[0] != key])
        node = OmegaConf.select(base, parent) if parent else base
        known = f"; keys under {parent or 'the top level'}: {', '.join(node)}" if isinstance(node, DictConfig) else ""
        return f"{key} is not a config key{known} (to add a new key: +{key}=...)"
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def _job_overrides(args: list[str]) -> list[list[str]]:
    """Every job's override list, with Hydra's sweep syntax (a=1,2 / range(...)) expanded."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for o in OverridesParser.create().parse_overrides(args):
        if o.is_sweep_override():
            choices.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(job) for job in itertools.product(*choices)]


def check_command_line(args: list[str], conf_dir: Path, config_name: str = "train", max_jobs: int = 256) -> None:
    """Compose every job of a `train.py` command line and check it; raise ConfigError with one line."""
    from hydra import compose, initialize_config_dir

    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if not a.startswith("-")]
    try:
        jobs = _job_overrides(overrides)
    except Exception as err:  # noqa: BLE001 - a syntax error in an override
        raise ConfigError(f"cannot parse the overrides: {str(err).strip().splitlines()[0]}") from None
    with initialize_config_dir(str(Path(conf_dir).resolve()), version_base="1.3"):
        def compose_job(job: list[str]) -> DictConfig:
            return compose(config_name, overrides=job)

        for job in jobs[:max_jobs]:
            try:
                cfg = compose_job(job)
            except Exception as err:  # noqa: BLE001 - every composition error becomes one line
                raise ConfigError(_one_line(err, job, conf_dir, compose_job)) from None
            check_config(cfg)
            if multirun:
                check_multirun(cfg)
