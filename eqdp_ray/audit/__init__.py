"""Privacy auditing: one real training run with canaries, and an empirical lower bound on epsilon.

The names are loaded on first use (PEP 562), so the CLI, which imports ``eqdp_ray.audit.cli`` for
every command, does not pay for torch when it only answers ``best`` or ``--help``.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"AUDIT_FILE": "eqdp_ray.audit.run", "run_audit": "eqdp_ray.audit.run", "write_audit": "eqdp_ray.audit.run"}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
