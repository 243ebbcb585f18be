"""The one exception type that train.py and the CLIs turn into a one-line message."""


class ConfigError(ValueError):
    """Bad input a user can fix: the message names the key, the bad value and the fix."""
