"""Tuning under a fixed privacy budget: search spaces, Ray Tune + Optuna + ASHA, the privacy of a search.

Importing this package imports neither Ray nor torch: the names load on first use (PEP 562), so the
CLI, which imports ``eqdp_ray.tune.cli`` for every command, starts fast; `run_search` imports Ray
when it runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "SearchPrivacy": "eqdp_ray.privacy.selection",
    "SearchSpace": "eqdp_ray.config.space",
    "SearchSummary": "eqdp_ray.tune.runner",
    "SpaceCheck": "eqdp_ray.tune.feasibility",
    "SpaceError": "eqdp_ray.config",
    "check_space": "eqdp_ray.tune.feasibility",
    "load_space": "eqdp_ray.config.space",
    "run_search": "eqdp_ray.tune.runner",
    "search_privacy": "eqdp_ray.privacy.selection",
    "trial_config": "eqdp_ray.config.space",
    "validate_space": "eqdp_ray.tune.runner",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
