"""The errors of bad input: one line that names the file, line and key to fix."""

from __future__ import annotations


class UserError(Exception):
    """Input the user must fix. The CLI prints the message as one line and exits 2; every layer's
    user-facing errors derive from this class, so anything else is a bug and keeps its traceback."""


class ConfigError(UserError, ValueError):
    """A configuration the user must fix; the message names the file, line and key and what is wrong."""


class SpaceError(ConfigError):
    """A search space the user must fix; the message names the file, line and key."""
