"""The run configuration as plain dataclasses, read from YAML with dotted `--set` overrides.

Every key is checked: an unknown key, a wrong type or an impossible value raises ConfigError
with the dotted path of the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration the user must fix; the message names the key and what is wrong."""


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None  # None: EQDP_DATA_DIR or ~/.cache/eqdp-ray/data
    download: bool = False
    val_size: float = 0.1  # fraction (<1) or count (>=1) carved from the training data
    train_subset: int | None = None
    test_subset: int | None = None


@dataclass
class ModelConfig:
    name: str = "eq_resnet9"
    options: dict[str, Any] = field(default_factory=dict)  # checked by the model registry


@dataclass
class PrivacyConfig:
    target_epsilon: float = 8.0
    delta: float = 1e-5
    accountant: str = "rdp"  # "rdp" (default) or "prv"
    max_grad_norm: float = 2.0
    # Seed of the noise and of the Poisson sampler. Leave null for a real run: a fresh seed is
    # drawn from the OS's CSPRNG and never written. A fixed value makes runs reproducible for
    # tests and is marked as such in the results: its noise is known to whoever knows the config.
    secret_seed: int | None = None


@dataclass
class TrainingConfig:
    batch_size: int = 256  # expected logical batch size: the sample rate is batch_size / train size
    steps: int | None = None  # exactly one of steps / epochs
    epochs: float | None = None
    augmult: int = 1  # augmentation multiplicity K
    crop_padding: int = 4
    hflip: bool | None = None  # None: whatever the data set allows
    optimizer: str = "sgd"
    lr: float = 2.0
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    ema_decay: float | None = 0.999
    physical_batch_size: int = 256  # augmented inputs per forward/backward; memory knob only
    eval_every: int | None = None  # steps between validation passes; None: once per epoch
    eval_batch_size: int = 1024


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0  # model init, data split, augmentation: public randomness
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, path)
    if origin is dict or annotation is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if annotation is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())
        ):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"unknown key '{where}{unknown[0]}'; valid keys here: {', '.join(names)}")
    kwargs = {
        name: _coerce(data[name], hints[name], f"{path}.{name}" if path else name) for name in names if name in data
    }
    return cls(**kwargs)


def _validate(config: RunConfig) -> RunConfig:
    t, p, d = config.training, config.privacy, config.data
    if (t.steps is None) == (t.epochs is None):
        raise ConfigError("training: set exactly one of 'steps' and 'epochs'")
    checks = [
        (t.steps is None or t.steps >= 1, "training.steps must be >= 1"),
        (t.epochs is None or t.epochs > 0, "training.epochs must be > 0"),
        (t.batch_size >= 1, "training.batch_size (expected logical batch) must be >= 1"),
        (t.augmult >= 1, "training.augmult must be >= 1"),
        (t.crop_padding >= 0, "training.crop_padding must be >= 0"),
        (t.lr > 0, "training.lr must be > 0"),
        (0 <= t.momentum < 1, "training.momentum must lie in [0, 1)"),
        (t.ema_decay is None or 0 <= t.ema_decay < 1, "training.ema_decay must lie in [0, 1) or be null"),
        (t.physical_batch_size >= 1, "training.physical_batch_size must be >= 1"),
        (t.optimizer in ("sgd",), "training.optimizer must be 'sgd'"),
        (p.target_epsilon > 0, f"privacy.target_epsilon must be > 0, got {p.target_epsilon}"),
        (0 < p.delta < 1, f"privacy.delta must lie strictly between 0 and 1, got {p.delta}"),
        (p.accountant in ("rdp", "prv"), f"privacy.accountant must be 'rdp' or 'prv', got {p.accountant!r}"),
        (p.max_grad_norm > 0, "privacy.max_grad_norm must be > 0"),
        (d.val_size > 0, "data.val_size must be > 0 (a validation split is needed for model selection)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return config


def parse_config(data: dict[str, Any] | None) -> RunConfig:
    return _validate(_build(RunConfig, data or {}, ""))


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a mapping")
        node[parts[-1]] = _parse_scalar(raw)
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data or {}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    data = load_yaml(path) if path is not None else {}
    apply_overrides(data, overrides or [])
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
