"""The one shape of a value check: `key=value is ...; use ...`, raised as a ConfigError.

Each rule lives where its value is used (the loss checks `loss.*`, the prior `noise.prior` …);
`validate.check_config` builds those cheap parts before a run starts, so a constructor's error
is the command line's one-line error.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from ganexp.errors import ConfigError

INT, FLOAT = "an integer", "a number"


def is_kind(value: Any, kind: str) -> bool:
    """An int (INT) or an int or float (FLOAT), never a bool: how every reader of a file checks a number."""
    return not isinstance(value, bool) and isinstance(value, int if kind == INT else (int, float))


def number(key: str, value: Any, kind: str, ok: Callable[[Any], bool], allowed: str) -> Any:
    """`value` when it is a finite `kind` for which `ok` holds; else ConfigError naming key, value and `allowed`."""
    if not is_kind(value, kind):
        raise ConfigError(f"{key}={value} is not {kind}; use {allowed}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value} is not finite; use {allowed}")
    if not ok(value):
        raise ConfigError(f"{key}={value} is out of range; use {allowed}")
    return value


def flag(key: str, value: Any) -> bool:
    """`value` when it is true or false; else ConfigError naming key and value."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value} is not true or false; use {key}=true or {key}=false")
    return value


def choice(key: str, value: Any, options: Iterable[str]) -> Any:
    options = list(options)
    if value not in options:
        raise ConfigError(f"{key}={value} is not allowed; choose one of {', '.join(options)}")
    return value
