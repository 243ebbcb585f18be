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

from ganexp.checks import FLOAT, INT, number
from ganexp.errors import ConfigError

# The keys no part owns (train.yaml's own, the optimizers' learning rates, eval's sizes): their one home.
# key, kind, predicate, what is allowed
RULES: list[tuple[str, str, Callable[[Any], bool], str]] = [
    ("seed", INT, lambda v: 0 <= v < 2**32, "an integer in [0, 2^32) (numpy's seed range)"),
    ("d_steps", INT, lambda v: v >= 1, "an integer >= 1"),
    ("batch_size", INT, lambda v: v >= 1, "an integer >= 1"),
    ("log_every", INT, lambda v: v >= 1, "an integer >= 1"),
    ("image_every", INT, lambda v: v >= 0, "an integer >= 0 (0 = only at the end)"),
    ("ckpt_every", INT, lambda v: v >= 0, "an integer >= 0 (0 = only at the end)"),
    ("n_fixed", INT, lambda v: v >= 1, "an integer >= 1"),
    ("eval_every", INT, lambda v: v >= 0, "an integer >= 0 (0 = only at the end)"),
    ("eval.batch_size", INT, lambda v: v >= 1, "an integer >= 1"),
    ("optimizer.lr", FLOAT, lambda v: v > 0, "a number > 0, e.g. 2e-4"),
    ("optimizer.g.lr", FLOAT, lambda v: v > 0, "a number > 0, e.g. 2e-4"),
    ("optimizer.d.lr", FLOAT, lambda v: v > 0, "a number > 0, e.g. 2e-4"),
    ("trainer.max_epochs", INT, lambda v: v >= 1 or v == -1, "an integer >= 1 (or -1: no limit)"),
]


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first bad value or nonsensical combination in `cfg`: the keys
    above, then the cheap parts built as a run builds them (loss, prior, instance noise, datamodule
    without its data, G and D), so that each part's own check is the one-line error."""
    from ganexp.build import build_cheap_parts
    from ganexp.metrics.scores import IMAGE_METRICS, TOY_METRICS, min_samples

    for key, kind, ok, allowed in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            number(key, value, kind, ok, allowed)
    shape = list(cfg.data.shape)
    monitor = OmegaConf.select(cfg, "eval.monitor", default="auto")
    allowed = list(TOY_METRICS if len(shape) == 1 else IMAGE_METRICS)
    if monitor != "auto" and monitor not in allowed:
        raise ConfigError(f"eval.monitor={monitor} is not a metric of this data; choose auto or one of {', '.join(allowed)}")
    need = min_samples(allowed)  # the metric registry's minimum for this data's scores
    for key in ("eval.n", "eval.n_final"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            number(key, value, INT, lambda v: v >= need, f"an integer >= {need} (what this data's metrics need)")
    build_cheap_parts(cfg)


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


def job_overrides(args: list[str]) -> list[list[str]]:
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
    if multirun and any(a.split("=", 1)[0].lstrip("+") in ("ckpt_path", "init_from") for a in overrides):
        raise ConfigError("ckpt_path / init_from with -m: a sweep's jobs resume by themselves when re-run with "
                          "hydra.sweep.dir=<that sweep>; resume one run without -m")
    try:
        jobs = job_overrides(overrides)
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
