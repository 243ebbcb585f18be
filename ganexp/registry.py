"""The parts ganexp builds by name: the one boundary between a config and code.

Every object ganexp makes from a config (the command line's, or one read back from a
checkpoint, an export or a run folder) is made here, by `build`: the node's `_target_`
must name a registered class of the expected kind, and its arguments must be plain data
(None, bool, int, float, str and lists / dicts of them). A config read from a file goes
through `check_stored` first, which walks it whole, at any depth, and refuses any Hydra
special key (`_target_`, `_args_`, `_partial_`, `_call_`, `_recursive_`, `_convert_`, …)
that does not name an allowed ganexp class, and any `${…}` interpolation. Nothing from a
file reaches `hydra.utils.instantiate`, `importlib` or `eval`.

Your own parts (a model in your package) are declared, never inferred from what is
importable: decorate the class with `@ganexp.registry.register("generator")` in code that
runs before the build, or name it in the environment:

    GANEXP_PARTS="generator=mypkg.models.BigGen,discriminator=mypkg.models.BigD"
"""
from __future__ import annotations

import functools
import importlib
import os
import re
from pathlib import Path
from typing import Any

from ganexp.errors import ConfigError

KINDS = ("generator", "discriminator", "data", "loss", "optimizer", "trainer", "logger", "callback")
PARTIAL_KINDS = ("optimizer",)  # built as factories: the module gives them its parameters

# _target_ -> kind. The names are constants of this file; only these modules are ever imported.
KNOWN: dict[str, str] = {
    "ganexp.models.mlp.MLPGenerator": "generator",
    "ganexp.models.dcgan.DCGANGenerator": "generator",
    "ganexp.models.mlp.MLPDiscriminator": "discriminator",
    "ganexp.models.dcgan.DCGANDiscriminator": "discriminator",
    "ganexp.data.digits.DigitsDataModule": "data",
    "ganexp.data.mnist.MNISTDataModule": "data",
    "ganexp.data.mnist.FashionMNISTDataModule": "data",
    "ganexp.data.toy.ToyDataModule": "data",
    "ganexp.data.image_folder.ImageFolderDataModule": "data",
    "ganexp.losses.GANLoss": "loss",
    "torch.optim.Adam": "optimizer",
    "torch.optim.AdamW": "optimizer",
    "torch.optim.RMSprop": "optimizer",
    "torch.optim.SGD": "optimizer",
    "pytorch_lightning.Trainer": "trainer",
    "pytorch_lightning.loggers.TensorBoardLogger": "logger",
    "ganexp.callbacks.checkpoint.PeriodicCheckpoint": "callback",
    "ganexp.callbacks.samples.SampleGrid": "callback",
    "ganexp.callbacks.curves.TrainingCurves": "callback",
    "ganexp.callbacks.progression.ImageProgression": "callback",
    "ganexp.callbacks.toy.ToyFigures": "callback",
    # the same classes under the names checkpoints made before ganexp/callbacks/ was a package
    "ganexp.callbacks.PeriodicCheckpoint": "callback",
    "ganexp.callbacks.SampleGrid": "callback",
    "ganexp.callbacks.TrainingCurves": "callback",
    "ganexp.callbacks.ImageProgression": "callback",
    "ganexp.callbacks.ToyFigures": "callback",
    "ganexp.metrics.callback.EvalCallback": "callback",
}
_REGISTERED: dict[str, tuple[str, type]] = {}  # parts declared in code with @register
ENV = "GANEXP_PARTS"
SPECIAL = re.compile(r"^_.*_$")  # Hydra's instantiate keys and anything shaped like them
MAX_DEPTH = 32


def register(kind: str):
    """Class decorator: allow `cls` (by its dotted name) wherever a part of `kind` is built."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")

    def add(cls: type) -> type:
        _REGISTERED[f"{cls.__module__}.{cls.__qualname__}"] = (kind, cls)
        return cls
    return add


def unregister(cls: type) -> None:
    """Undo `register` (tests, notebooks)."""
    _REGISTERED.pop(f"{cls.__module__}.{cls.__qualname__}", None)


def _declared() -> dict[str, str]:
    """GANEXP_PARTS: kind=dotted.Name pairs, separated by commas."""
    parts = {}
    for item in filter(None, (s.strip() for s in os.environ.get(ENV, "").split(","))):
        kind, sep, name = item.partition("=")
        if not sep or kind not in KINDS or not re.fullmatch(r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*", name):
            raise ConfigError(f"{ENV}: {item!r} is not kind=package.module.Class with kind one of {', '.join(KINDS)}")
        parts[name] = kind
    return parts


def kind_of(target: Any) -> str | None:
    """The kind of an allowed `_target_`, or None when it is not allowed."""
    if not isinstance(target, str):
        return None
    if target in _REGISTERED:
        return _REGISTERED[target][0]
    return KNOWN.get(target) or _declared().get(target)


def _resolve(target: str) -> type:
    if target in _REGISTERED:
        return _REGISTERED[target][1]
    module, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)  # an allowed name only (kind_of checked it)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import {target} ({err}); is its package installed?") from None
    if not isinstance(obj, type):
        raise ConfigError(f"{target} is not a class; only classes can be declared as ganexp parts")
    return obj


def _refuse(source: str, key: str, what: str) -> ConfigError:
    fix = f"; declare your own classes with {ENV}=kind=package.Class (README: bad input and faults)"
    sep = "" if what.startswith("=") else " "
    return ConfigError(f"{source or 'the config'}: {key}{sep}{what}; refused, nothing was built{fix}")


def check_stored(config: Any, source: str | Path, prefix: str = "") -> None:
    """Refuse a config read from a file if any node, at any depth, could make ganexp run code
    it does not know: a special key other than an allowed `_target_` (and `_partial_` on an
    optimizer), a `${...}` interpolation, or a non-plain value."""
    source = str(source)

    def walk(node: Any, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _refuse(source, path or "the config", f"is nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            target = node.get("_target_")
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if not isinstance(key, str):
                    raise _refuse(source, where, "has a key that is not a string")
                if SPECIAL.match(key):
                    if key == "_target_":
                        if kind_of(value) is None:
                            raise _refuse(source, where, f"={_short(value)} is not a ganexp part")
                    elif key == "_partial_" and isinstance(value, bool) and kind_of(target) in PARTIAL_KINDS:
                        pass
                    else:
                        raise _refuse(source, where, f"={_short(value)} is a special key ganexp does not accept here")
                    continue
                walk(value, where, depth + 1)
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]", depth + 1)
        elif isinstance(node, str):
            if "${" in node:
                raise _refuse(source, path, f"={node!r} is an interpolation; stored configs hold resolved values")
        elif node is not None and not isinstance(node, (bool, int, float)):
            raise _refuse(source, path, f"holds a {type(node).__name__}, not plain data")

    walk(config, prefix, 0)


def _short(value: Any) -> str:
    """A bounded repr: deep or huge values from a crafted file must not blow up the one-line message."""
    import reprlib

    brief = reprlib.Repr()
    brief.maxlevel, brief.maxstring, brief.maxother = 3, 60, 60
    text = brief.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value: Any, where: str, source: str) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}.{k}", source) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise _refuse(source, where, f"holds a {type(value).__name__}, not plain data")


def _misconfiguration() -> type[Exception]:
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    return MisconfigurationException


def build(node: Any, kind: str, *, key: str, source: str | Path = "", **extra: Any) -> Any:
    """The object `node` describes: `_target_` must be an allowed class of `kind`; every other
    entry is a plain keyword argument (`extra` adds live objects, e.g. the trainer's callbacks)."""
    from omegaconf import DictConfig, OmegaConf

    source = str(source)
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict):
        raise _refuse(source, key, f"is a {type(node).__name__}, not a mapping with _target_")
    check_stored(node, source, key)
    target = node.get("_target_")
    if kind_of(target) != kind:
        found = kind_of(target)
        what = "has no _target_" if target is None else f"._target_={target!r} is a {found}, not a {kind}"
        raise _refuse(source, key, what)
    cls = _resolve(target)
    kwargs = {k: _plain(v, f"{key}.{k}", source) for k, v in node.items() if not SPECIAL.match(k)}
    if node.get("_partial_"):
        return functools.partial(cls, **kwargs, **extra)
    try:
        return cls(**kwargs, **extra)
    except ConfigError:
        raise
    except (TypeError, ValueError, RuntimeError, OverflowError, MemoryError, KeyError, IndexError, ImportError,
            _misconfiguration()) as err:  # what a constructor says about its arguments (Lightning's own kind too)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{source + ': ' if source else ''}cannot build {key} ({target}): {first}") from None
