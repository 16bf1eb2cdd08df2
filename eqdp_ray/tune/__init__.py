"""Tuning under a fixed privacy budget: search spaces, Ray Tune + Optuna + ASHA, the privacy of a search.

Importing this package does not import Ray; `run_search` does, when it runs.
"""

from eqdp_ray.config import SpaceError
from eqdp_ray.config.space import SearchSpace, load_space, trial_config
from eqdp_ray.privacy.selection import SearchPrivacy, search_privacy
from eqdp_ray.tune.feasibility import SpaceCheck, check_space
from eqdp_ray.tune.runner import SearchSummary, run_search, validate_space

__all__ = [
    "SearchPrivacy",
    "SearchSpace",
    "SearchSummary",
    "SpaceCheck",
    "SpaceError",
    "check_space",
    "load_space",
    "run_search",
    "search_privacy",
    "trial_config",
    "validate_space",
]
