"""The errors of bad input: one line that names the file, line and key to fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration the user must fix; the message names the file, line and key and what is wrong."""


class SpaceError(ConfigError):
    """A search space the user must fix; the message names the file, line and key."""
