"""Typed, validated configuration (one pydantic schema for run configs and search spaces): the one
place where bad input becomes a clear error."""

from eqdp_ray.config.errors import ConfigError, SpaceError
from eqdp_ray.config.overrides import apply_overrides
from eqdp_ray.config.schema import (
    DataConfig,
    ModelConfig,
    PrivacyConfig,
    RunConfig,
    TrainingConfig,
    config_keys,
    config_to_dict,
    default_of,
    load_config,
    parse_config,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "PrivacyConfig",
    "RunConfig",
    "SpaceError",
    "TrainingConfig",
    "apply_overrides",
    "config_keys",
    "config_to_dict",
    "default_of",
    "load_config",
    "parse_config",
]
