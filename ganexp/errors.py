"""The one exception type that train.py and the CLIs turn into a one-line message."""
import os
import sys


class ConfigError(ValueError):
    """Bad input a user can fix: the message names the key, the bad value and the fix."""


def shown(value: object, width: int = 40) -> str:
    """A value as a one-line message quotes it: control characters escaped (a name read from a file
    may hold a newline or a terminal escape), at most `width` characters, cut with "..."."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
    return text if len(text) <= width else text[: width - 3] + "..."


def failed(prog: str, err: ConfigError, debug: bool = False) -> int:
    """A CLI's one-line error on stderr and exit status 2 (the traceback instead with --debug or HYDRA_FULL_ERROR=1)."""
    if debug or os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2
