"""The one exception type that train.py and the CLIs turn into a one-line message."""


class ConfigError(ValueError):
    """Bad input a user can fix: the message names the key, the bad value and the fix."""


def shown(value: object, width: int = 40) -> str:
    """A value as a one-line message quotes it: control characters escaped (a name read from a file
    may hold a newline or a terminal escape), at most `width` characters, cut with "..."."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
    return text if len(text) <= width else text[: width - 3] + "..."
