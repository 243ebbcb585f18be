"""The parts ganexp builds by name: the one boundary between a config and code.

Every object ganexp makes from a config (the command line's, or one read back from a file) is made by
`build`: `_target_` must name a registered class of the expected kind, and the arguments must be plain data.
A stored config goes through `check_stored` first, which refuses any Hydra special key that does not name
an allowed ganexp class, and any `${…}` interpolation, at any depth. Nothing from a file reaches
`hydra.utils.instantiate`, `importlib` or `eval`.

Your own parts are declared, never inferred from what is importable: decorate the class with
`@ganexp.config.registry.register("generator")`, or name it in the environment:

    GANEXP_PARTS="generator=mypkg.models.BigGen,discriminator=mypkg.models.BigD"
"""
from __future__ import annotations

import difflib
import functools
import importlib
import inspect
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
    "ganexp.data.cifar10.CIFAR10DataModule": "data",
    "ganexp.data.stl10.STL10DataModule": "data",
    "ganexp.data.celeba.CelebADataModule": "data",
    "ganexp.gan.losses.GANLoss": "loss",
    "torch.optim.Adam": "optimizer",
    "torch.optim.AdamW": "optimizer",
    "torch.optim.RMSprop": "optimizer",
    "torch.optim.SGD": "optimizer",
    "pytorch_lightning.Trainer": "trainer",
    "pytorch_lightning.loggers.TensorBoardLogger": "logger",
    "pytorch_lightning.loggers.MLFlowLogger": "logger",
    "pytorch_lightning.loggers.CSVLogger": "logger",
    "ganexp.callbacks.checkpoint.PeriodicCheckpoint": "callback",
    "ganexp.callbacks.samples.SampleGrid": "callback",
    "ganexp.callbacks.curves.TrainingCurves": "callback",
    "ganexp.callbacks.progression.ImageProgression": "callback",
    "ganexp.callbacks.toy.ToyFigures": "callback",
    # the same classes under the names checkpoints made before ganexp/callbacks/ was a package
    **{f"ganexp.callbacks.{name}": "callback"
       for name in ("PeriodicCheckpoint", "SampleGrid", "TrainingCurves", "ImageProgression", "ToyFigures")},
    "ganexp.metrics.callback.EvalCallback": "callback",
}
# Parts whose class needs a package ganexp installs only with an extra: _target_ -> (module, extra).
EXTRAS: dict[str, tuple[str, str]] = {"pytorch_lightning.loggers.MLFlowLogger": ("mlflow", "mlflow")}
# Names that checkpoints, exports and run folders made before ganexp/ had subpackages store: the same classes.
MOVED: dict[str, str] = {"ganexp.losses.GANLoss": "ganexp.gan.losses.GANLoss"}
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
    target = MOVED.get(target, target)
    return _REGISTERED[target][0] if target in _REGISTERED else KNOWN.get(target) or _declared().get(target)


def require(target: Any, key: str) -> None:
    """ConfigError naming the extra when the part `target` needs a package that is not installed."""
    import importlib.util

    module, extra = EXTRAS.get(target, (None, None))
    if module is not None and importlib.util.find_spec(module) is None:
        raise ConfigError(f"{key} ({target.rsplit('.', 1)[-1]}) needs the {module} package, which is not installed; "
                          f"pip install -e \".[{extra}]\" (or pip install {module})")


def _resolve(target: str) -> type:
    target = MOVED.get(target, target)
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
                if not SPECIAL.match(key):
                    walk(value, where, depth + 1)
                elif key == "_target_":
                    if kind_of(value) is None:
                        raise _refuse(source, where, f"={_short(value)} is not a ganexp part")
                elif not (key == "_partial_" and isinstance(value, bool) and kind_of(target) in PARTIAL_KINDS):
                    raise _refuse(source, where, f"={_short(value)} is a special key ganexp does not accept here")
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


def _plain(value: Any) -> Any:
    """A copy of a value check_stored passed (plain data), tuples as lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def cannot_build(source: str, key: str, target: Any, what: str) -> ConfigError:
    """The one line for a part whose arguments are bad input."""
    return ConfigError(f"{source + ': ' if source else ''}cannot build {key} ({target}): {what}")


_SCALARS = {type(None): type(None), bool: (bool, int), int: int, float: (int, float), str: str}  # hint → what fits


def _fits(value: Any, hint: Any) -> bool:
    """Whether a plain value can be an argument annotated `hint`: only plain annotations (int, float, bool, str,
    None, sequences and mappings of them, unions) are judged; any other annotation takes anything."""
    import collections.abc
    import types
    import typing

    if hint is inspect.Parameter.empty or hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if isinstance(hint, type) and hint in _SCALARS:
        return isinstance(value, _SCALARS[hint])
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return len(set(args)) != 1 or all(_fits(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping) or hint in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    return True  # a class of its own, a Literal, a callable...: the constructor judges it


def _signature(cls: type) -> inspect.Signature | None:
    for eval_str in (True, False):
        try:
            return inspect.signature(cls, eval_str=eval_str)
        except (NameError, TypeError, ValueError, SyntaxError, AttributeError):
            continue
    return None


def check_arguments(cls: type, kwargs: dict[str, Any], extra: dict[str, Any], *, key: str, target: str,
                    source: str = "", partial: bool = False) -> None:
    """ConfigError (naming the dotted key and what the class takes) when the config's arguments cannot be
    `cls`'s: an argument it does not take, or a required one missing (not for a partial: the rest comes at
    the call)."""
    signature = _signature(cls)
    if signature is None:
        return
    params = signature.parameters
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes = ", ".join(named) or "no arguments"
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in kwargs if k not in named]
        if unknown:
            close = difflib.get_close_matches(unknown[0], named, n=1)
            hint = f" (did you mean {key}.{close[0]}?)" if close else ""
            raise cannot_build(source, key, target, f"{', '.join(f'{key}.{k}' for k in unknown)} is not an argument "
                                                    f"of {cls.__name__}{hint}; it takes {takes}")
    if not partial:
        missing = [n for n in named if params[n].default is inspect.Parameter.empty and n not in kwargs
                   and n not in extra]
        if missing:
            raise cannot_build(source, key, target, f"{', '.join(f'{key}.{n}' for n in missing)} is required "
                                                    f"(give {key}.{missing[0]}=...); {cls.__name__} takes {takes}")


def misfit(cls: type, kwargs: dict[str, Any], *, key: str) -> str | None:
    """'<key>.<name>=<value> is a str, not int' for the first plain value its annotation cannot hold, or None."""
    signature = _signature(cls)
    for name, value in kwargs.items():
        param = signature.parameters.get(name) if signature is not None else None
        hint = param.annotation if param is not None else ""  # a string annotation (or none) is not judged
        if not isinstance(hint, str) and not _fits(value, hint):
            wanted = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            return f"{key}.{name}={_short(value)} is a {type(value).__name__}, not {wanted}"
    return None


def build(node: Any, kind: str, *, key: str, source: str | Path = "", **extra: Any) -> Any:
    """The object `node` describes: `_target_` must be an allowed class of `kind`; every other entry is a plain
    keyword argument (`extra` adds live objects, e.g. the trainer's callbacks). Bad input is a ConfigError:
    the node, its arguments against the class's signature, a ConfigError of the constructor, and a TypeError
    where a value does not have its argument's annotated type; any other exception is a bug and propagates."""
    from omegaconf import DictConfig, OmegaConf

    source = str(source)
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict):
        raise _refuse(source, key, f"is a {type(node).__name__}, not a mapping with _target_")
    check_stored(node, source, key)
    target = node.get("_target_")
    if (found := kind_of(target)) != kind:
        what = "has no _target_" if target is None else f"._target_={target!r} is a {found}, not a {kind}"
        raise _refuse(source, key, what)
    require(target, key)
    cls = _resolve(target)
    kwargs = {k: _plain(v) for k, v in node.items() if not SPECIAL.match(k)}
    partial = bool(node.get("_partial_"))
    check_arguments(cls, kwargs, extra, key=key, target=target, source=source, partial=partial)
    if partial:
        return functools.partial(cls, **kwargs, **extra)
    try:
        return cls(**kwargs, **extra)  # a ConfigError it raises is bad input
    except TypeError:  # bad input only where a value is not of its argument's annotated type (latent_dim="x")
        what = misfit(cls, kwargs, key=key)
        if what is None:
            raise  # a bug
        raise cannot_build(source, key, target, what) from None
