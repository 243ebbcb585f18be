"""Bad input → one line that names the key, the bad value and what is allowed.

`check_config` runs on a composed config before anything is built or written.
`check_command_line` composes the command line's overrides itself first, so that
Hydra's multi-line composition errors (unknown option, typo'd key) come out as one
line too, and a sweep is checked job by job before its first job starts.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ganexp.run import compose as store
from ganexp.config.checks import FLOAT, INT, flag, number
from ganexp.errors import ConfigError, shown
from ganexp.io.files import machine_memory
from ganexp.run.jobs import check_folder
from ganexp.run.folders import register_resolvers

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
    ("ema.decay", FLOAT, lambda v: 0 <= v < 1, "a number in [0, 1) (0 = off), e.g. 0.999"),
    ("ema.start", INT, lambda v: v >= 0, "an integer >= 0 (iterations before averaging starts)"),
    ("trainer.max_epochs", INT, lambda v: v >= 1 or v == -1, "an integer >= 1 (or -1: no limit)"),
    ("trainer.limit_train_batches", FLOAT, lambda v: v >= 1 if isinstance(v, int) else 0 < v <= 1,
     "an integer >= 1 (batches per epoch) or a fraction in (0, 1] of them"),  # 0 trains nothing and says finished
]
# The longest name ganexp, Hydra or TensorBoard gives a file inside a run folder
# (events.out.tfevents.<time>.<host>.<pid>.<n>, .hydra/attempts/<time>_<pid>/overrides.yaml).
INSIDE = 128


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first bad value or nonsensical combination in `cfg`: the keys
    above, then the cheap parts built as a run builds them (loss, prior, instance noise, datamodule
    without its data, G and D), so that each part's own check is the one-line error."""
    from ganexp.run.build import build_cheap_parts, check_loggers, logger_parts
    from ganexp.metrics.scores import IMAGE_METRICS, TOY_METRICS, min_samples

    for key, kind, ok, allowed in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            number(key, value, kind, ok, allowed)
    flag("reuse_fake", OmegaConf.select(cfg, "reuse_fake", default=False))
    shape = list(cfg.data.shape)
    need = min_samples(TOY_METRICS if len(shape) == 1 else IMAGE_METRICS)  # the registry's minimum for this data
    for key in ("eval.n", "eval.n_final"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            number(key, value, INT, lambda v: v >= need, f"an integer >= {need} (what this data's metrics need)")
    for key in ("optimizer.betas", "optimizer.g.betas", "optimizer.d.betas"):
        betas, pair = OmegaConf.select(cfg, key, default=None), "two numbers in [0, 1), e.g. [0.5,0.999]"
        if betas is not None and (not isinstance(betas, (list, tuple, ListConfig)) or len(betas) != 2):
            raise ConfigError(f"{key}={betas} is not a pair; use {pair}")
        for i, beta in enumerate(betas or ()):
            number(f"{key}[{i}]", beta, FLOAT, lambda v: 0 <= v < 1, pair)
    _check_device(cfg)
    _check_launch_environment(cfg)
    for where, key in itertools.product(logger_parts(cfg.get("logger")), ("name", "version", "sub_dir")):
        value = OmegaConf.select(cfg, f"{where}.{key}", default=None)  # <save_dir>/<name>/<version>/<sub_dir>
        text = str(value)
        if value is not None and not isinstance(value, int) and (os.sep in text or text in (".", "..") or "\0" in text):
            raise ConfigError(f"{where}.{key}={shown(text)} is not a plain folder name; the logger writes inside "
                              f"the run folder: give a name without '/' (or \"\" for the run folder itself)")
    _check_max_time(cfg)
    check_loggers(cfg)
    parts = build_cheap_parts(cfg)
    _check_eval(cfg, getattr(parts["data"], "metrics_name", None))
    _check_memory(cfg, parts)
    _check_batches(cfg)


def _check_eval(cfg: DictConfig, dataset: str | None) -> None:
    """eval.features for this data, eval.monitor among its metrics, and Inception's weights (a download, or the one
    line saying where to put them) before any folder is made."""
    from ganexp.metrics.evaluator import feature_space, metrics_of
    from ganexp.metrics.inception import load_inception
    from ganexp.metrics.scores import TOY_METRICS

    if OmegaConf.select(cfg, "eval._target_", default=None) is None:  # eval=none
        return
    space = feature_space(OmegaConf.select(cfg, "eval.features", default="auto"), dataset)
    allowed = list(TOY_METRICS) if space == "toy" else metrics_of(space)
    monitor = OmegaConf.select(cfg, "eval.monitor", default="auto")
    if monitor != "auto" and monitor not in allowed:
        raise ConfigError(f"eval.monitor={monitor} is not a metric of this data; choose auto or one of {', '.join(allowed)}")
    if space == "inception":
        load_inception(OmegaConf.select(cfg, "eval.inception_weights", default=None))


def _check_batches(cfg: DictConfig) -> None:
    """A fraction of an epoch's batches that rounds down to none is Lightning's traceback at the first epoch.
    How many batches there are is known once the data is loaded, so only a fraction below 1 loads it here."""
    from ganexp.run.build import plain

    limit = OmegaConf.select(cfg, "trainer.limit_train_batches", default=1.0)
    if not isinstance(limit, float) or limit >= 1:
        return
    items = _dataset_size(json.dumps(plain(cfg.data), sort_keys=True))
    batches = items // _processes(cfg) // int(cfg.batch_size)  # each process's share, whole batches (drop_last)
    if batches >= 1 and int(batches * limit) == 0:
        raise ConfigError(f"trainer.limit_train_batches={limit} is 0 of this data's {batches} batches per epoch "
                          f"({items} items, batch_size={cfg.batch_size}); use a fraction >= "
                          f"{math.ceil(10_000 / batches) / 10_000:g}, or a number of batches, e.g. "
                          "trainer.limit_train_batches=1")


@functools.lru_cache(maxsize=8)  # a sweep's jobs share their data
def _dataset_size(data: str) -> int:
    from ganexp.run.build import build_datamodule

    datamodule = build_datamodule(json.loads(data))
    datamodule.setup("fit")  # a missing dataset is its one line, as in a run
    return len(datamodule.train_data)


def _processes(cfg: DictConfig) -> int:
    """How many processes Lightning starts for trainer.devices (and num_nodes), at least 1."""
    import torch

    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    nodes = OmegaConf.select(cfg, "trainer.num_nodes", default=1)
    if isinstance(devices, (list, ListConfig)):
        processes = len(devices)
    elif str(devices) in ("-1", "auto"):
        processes = torch.cuda.device_count() if str(OmegaConf.select(cfg, "trainer.accelerator")) != "cpu" else 1
    else:
        processes = devices if isinstance(devices, int) else 1
    return max(1, processes) * (nodes if isinstance(nodes, int) and nodes >= 1 else 1)


def _check_max_time(cfg: DictConfig) -> None:
    """trainer.max_time as Lightning takes it ("DD:HH:MM:SS" or {days:, hours:, minutes:, seconds:}), and a
    budget that trains something (0 or less trained nothing and said finished; a bare number was a traceback)."""
    import datetime

    value = OmegaConf.select(cfg, "trainer.max_time", default=None)
    if value is None:
        return
    fix = 'give "DD:HH:MM:SS" (e.g. trainer.max_time=00:00:10:00 for 10 minutes) or null'
    try:
        if isinstance(value, str):
            days, hours, minutes, seconds = (int(v) for v in value.split(":"))
            budget = datetime.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        elif isinstance(value, DictConfig):
            budget = datetime.timedelta(**{k: float(v) for k, v in value.items()})
        else:
            raise TypeError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"trainer.max_time={shown(value)} is not a time budget; {fix}") from None
    if budget.total_seconds() <= 0:
        raise ConfigError(f"trainer.max_time={shown(value)} is no time to train; {fix}")


def _check_device(cfg: DictConfig) -> None:
    """trainer.accelerator=gpu (trainer=gpu) needs a CUDA GPU, and trainer.devices no more than there are."""
    import torch

    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if accelerator not in ("gpu", "cuda"):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"trainer.accelerator={accelerator} (trainer=gpu) but this machine has no CUDA GPU that "
                          "torch can use; use trainer=default (GPU when there is one, else CPU) or trainer=cpu")
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > count:
        raise ConfigError(f"trainer.devices={devices} but this machine has {count} GPU(s); use trainer.devices={count} "
                          "or fewer (-1: all)")


def _check_launch_environment(cfg: DictConfig) -> None:
    """A DDP run on several devices started with LOCAL_RANK in the environment but no WORLD_SIZE (left by an
    in-process Lightning DDP run, or a stray export): Lightning takes it for one rank of a job launched from
    outside, starts no other rank and waits for them in torch's rendezvous, where no signal stops it."""
    strategy = str(OmegaConf.select(cfg, "trainer.strategy", default="auto"))
    if "ddp" not in strategy or "LOCAL_RANK" not in os.environ or "WORLD_SIZE" in os.environ:
        return
    if (processes := _processes(cfg)) > 1:
        raise ConfigError(f"LOCAL_RANK={os.environ['LOCAL_RANK'][:20]} is set in the environment without WORLD_SIZE, so "
                          f"Lightning would take this run for one rank of a job launched from outside and wait for the "
                          f"other {processes - 1} forever; unset LOCAL_RANK (and NODE_RANK), or launch every rank "
                          f"yourself with WORLD_SIZE set")


def _check_memory(cfg: DictConfig, parts: dict[str, Any]) -> None:
    """The sizes' memory (weights, gradients and two optimizer states for G and D; the fixed latent
    batch and its images; one batch's latents and images), estimated before anything is allocated."""
    per_item = 4  # float32 bytes
    latent = int(cfg.noise.latent_dim)
    image = math.prod(int(d) for d in cfg.data.shape)
    needs = {  # what each takes, by how the message names it
        f"model.generator with noise.latent_dim={latent}":
            4 * per_item * sum(p.numel() for p in parts["generator"].parameters()),
        f"model.discriminator for data.shape={list(cfg.data.shape)}":
            4 * per_item * sum(p.numel() for p in parts["discriminator"].parameters()),
        f"n_fixed={cfg.n_fixed} (latent batch and grid images, noise.latent_dim={latent})":
            per_item * int(cfg.n_fixed) * (latent + image),
        f"batch_size={cfg.batch_size}": per_item * int(cfg.batch_size) * (latent + 2 * image) * (1 + int(cfg.d_steps)),
    }
    if sum(needs.values()) > (have := machine_memory()):
        raise ConfigError(f"these sizes need about {sum(needs.values()) / 2**30:.1f} GiB, most of it for "
                          f"{max(needs, key=needs.get)}, more than this machine's {have / 2**30:.1f} GiB; "
                          "use smaller sizes")


def check_multirun(cfg: DictConfig) -> None:
    """`-m` with DDP would re-launch the whole sweep in every DDP process."""
    strategy, devices = str(cfg.trainer.get("strategy", "auto")), cfg.trainer.get("devices", 1)
    if "ddp" in strategy or (isinstance(devices, int) and devices > 1):
        raise ConfigError(f"-m (multirun) with DDP (trainer.strategy={strategy}, trainer.devices={devices}) "
                          "re-runs the whole sweep in each process; sweep with one device per job, or drop -m")


def _one_line(err: Exception, job: list[str], conf_dir: Path, compose) -> str:
    """Hydra's composition errors, rewritten as one line that names the override and the fix."""
    text = str(err)
    if missing := re.search(r"Could not find '([^']+)/([^']+)'", text):  # unknown option of a config group
        group, option = missing.groups()
        options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
        return f"{group}={option} is not an option of {group}; choose one of {', '.join(options)}"
    if bad_key := re.search(r"Could not override '([^']+)'", text):  # a key that does not exist (typo)
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
        if o.is_interval_sweep():  # a searched range (Optuna): both ends must be allowed values
            choices.append([f"{o.get_key_element()}={v}" for v in (o.value().start, o.value().end)])
        elif o.is_sweep_override():
            choices.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([o.input_line])
    return [list(job) for job in itertools.product(*choices)]


def check_command_line(args: list[str], conf_dir: Path, config_name: str = "train") -> None:
    """Compose every job (at most 256) of a `train.py` command line and check it; raise ConfigError with one line.

    A sweep's jobs are composed as Hydra's launcher will compose them, and kept for it (config/compose.py);
    the job name is the one hydra.main gives (the script's name)."""
    from hydra import compose, initialize_config_dir

    register_resolvers()  # the run and job folders are named by ganexp's resolvers
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if not a.startswith("-")]
    if multirun and any(a.split("=", 1)[0].lstrip("+") in ("ckpt_path", "init_from") for a in overrides):
        raise ConfigError("ckpt_path / init_from with -m: a sweep's jobs resume by themselves when re-run with "
                          "hydra.sweep.dir=<that sweep>; resume one run without -m")
    try:
        jobs = job_overrides(overrides)[:256]
    except Exception as err:  # noqa: BLE001 - a syntax error in an override
        raise ConfigError(f"cannot parse the overrides: {str(err).strip().splitlines()[0]}") from None
    store.forget()
    hydra_jobs = _hydra_jobs(overrides, jobs, conf_dir, config_name) if multirun else [None] * len(jobs)
    with initialize_config_dir(str(Path(conf_dir).resolve()), job_name="train", version_base="1.3"):
        folders: dict[str | None, list[str]] = {}
        for job, hydra_job in zip(jobs, hydra_jobs):
            cfg = None
            if hydra_job is not None:
                with contextlib.suppress(Exception):  # as the launcher composes it, kept for it
                    cfg = store.compose_job(config_name, hydra_job)
            try:  # else in the command line's order; with Hydra's part (the job's folder), checked without it
                cfg = compose(config_name, overrides=job, return_hydra_config=True) if cfg is None else cfg
            except Exception as err:  # noqa: BLE001 - every composition error becomes one line
                raise ConfigError(_one_line(err, job, conf_dir, lambda o: compose(config_name, overrides=o))) from None
            folder = _job_folder(cfg) if multirun else _run_folder(cfg)
            with open_dict(cfg):
                del cfg["hydra"]
            check_config(cfg)
            if multirun:
                check_multirun(cfg)
                if folder is not None and folder in folders:
                    raise ConfigError(f"two jobs of this sweep go to one folder ({folder}): {' '.join(folders[folder])} "
                                      f"and {' '.join(job)}; drop the hydra.sweep.subdir override (ganexp names each "
                                      "job's folder after its overrides)")
                folders[folder] = job


def _hydra_jobs(overrides: list[str], jobs: list[list[str]], conf_dir: Path, config_name: str) -> list:
    """Each job's overrides as Hydra's sweeper and launcher compose it (config/compose.py), or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        single = [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()]
        hydra_cfg = store.hydra_config(str(Path(conf_dir).resolve()), config_name, tuple(single))  # with_grid's
    except Exception:  # noqa: BLE001 - a command line that does not compose: said job by job below
        return [None] * len(jobs)
    finally:
        store.hydra_config.cache_clear()  # kept from with_grid to this check only: the next command line reads conf/ again
    return store.sweep_jobs(overrides, jobs, hydra_cfg)


def check_folder_name(folder: Path, what: str, fix: str) -> None:
    """A folder Hydra is about to make: each name within the file system's NAME_MAX bytes, and the whole
    path, with room for the files written in it, within PATH_MAX (Hydra's makedirs fails with a traceback)."""
    path = Path(os.path.abspath(folder))
    existing = next(p for p in (path, *path.parents) if os.path.isdir(p))  # isdir: False for a too-long name
    try:
        name_max, path_max = os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):  # a file system that does not say: Linux's usual limits
        name_max, path_max = 255, 4096
    for name in path.relative_to(existing).parts:
        if (size := len(os.fsencode(name))) > name_max:
            raise ConfigError(f"{what} has a folder name of {size} bytes ({shown(name)}), more than the {name_max} "
                              f"this file system allows (NAME_MAX); {fix}")
    if (size := len(os.fsencode(str(path)))) + INSIDE > path_max:
        raise ConfigError(f"{what} is {size} bytes long; with the files written in it that is more than the "
                          f"{path_max} this file system allows (PATH_MAX); {fix}")


def _run_folder(cfg: DictConfig) -> None:
    try:
        folder = str(cfg.hydra.run.dir)
    except Exception:  # noqa: BLE001 - a folder named from Hydra's runtime values: checked by Hydra
        return None
    check_folder_name(Path(folder), f"hydra.run.dir={shown(folder)}", "use a shorter hydra.run.dir")


def _job_folder(cfg: DictConfig) -> str | None:
    """A sweep job's folder within its sweep (None: named only at run time): one the file system can make;
    when it exists (a re-run), it must be free and, if finished, hold the same job (ganexp/run/jobs.py)."""
    from ganexp.io.files import BadFile

    try:
        sweep_dir, subdir = Path(str(cfg.hydra.sweep.dir)), str(cfg.hydra.sweep.subdir)
    except Exception:  # noqa: BLE001 - a folder named from Hydra's runtime values
        return None
    check_folder_name(sweep_dir, f"hydra.sweep.dir={shown(sweep_dir)}", "use a shorter hydra.sweep.dir")
    check_folder_name(sweep_dir / subdir, "the sweep job folder (named after its overrides)",
                      "use shorter override values or hydra.sweep.dir, or name the jobs by number: "
                      "hydra.sweep.subdir=${hydra.job.num}")
    if (sweep_dir / subdir).is_dir():
        with contextlib.suppress(BadFile):  # an unreadable record fails that job alone, when it runs; the others go on
            check_folder(sweep_dir / subdir, list(cfg.hydra.overrides.task))
    return subdir
