"""Typed, validated configuration: the one place where bad input becomes a clear error."""

from eqdp_ray.config.schema import (
    ConfigError,
    DataConfig,
    ModelConfig,
    PrivacyConfig,
    RunConfig,
    TrainingConfig,
    apply_overrides,
    config_to_dict,
    load_config,
    parse_config,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "PrivacyConfig",
    "RunConfig",
    "TrainingConfig",
    "apply_overrides",
    "config_to_dict",
    "load_config",
    "parse_config",
]
