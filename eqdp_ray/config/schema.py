"""The run configuration: one declarative pydantic schema, read from YAML with dotted `--set` overrides.

Every key has one type, one default and one error, whether it comes from a run config, a search
space's `data`/`privacy` block, a `fixed` value or a searched choice. An unknown key, a wrong type
or an impossible value raises ConfigError naming the file, the line and the dotted key, so a typo
never silently falls back to a default. Counts and fractions follow the rule in `config/types.py`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, ValidationInfo, model_validator

from eqdp_ray.config.errors import ConfigError
from eqdp_ray.config.overrides import apply_overrides
from eqdp_ray.config.source import Source, read_yaml
from eqdp_ray.config.types import Block, Bool, Count, CountOrFraction, Int, Number, PositiveNumber, Str, as_error, fail

Epsilon = PositiveNumber
Delta = Annotated[Number, Field(gt=0, lt=1)]
Accountant = Literal["rdp", "prv"]
UnitInterval = Annotated[Number, Field(ge=0, lt=1)]  # momentum, EMA decay


class DataConfig(Block):
    name: Str = "digits"
    root: Str | None = None  # None: EQDP_DATA_DIR or ~/.cache/eqdp-ray/data
    download: Bool = False
    # carved from the training data for model selection: a count (5000) or a fraction (0.1)
    val_size: CountOrFraction = 0.1
    train_subset: Count | None = None
    test_subset: Count | None = None


class ModelConfig(Block):
    name: Str = "eq_resnet9"
    options: dict[str, Any] = Field(default_factory=dict)  # checked by the model registry


class PrivacyConfig(Block):
    target_epsilon: Epsilon = 8.0
    delta: Delta = 1e-5
    accountant: Accountant = "rdp"
    max_grad_norm: PositiveNumber = 2.0
    # Seed of the noise and of the Poisson sampler. Leave null for a real run: a fresh seed is
    # drawn from the OS's CSPRNG and never written. A fixed value makes runs reproducible for
    # tests and is marked as such in the results: its noise is known to whoever knows the config.
    secret_seed: Int | None = None
    # Set by a search in budget scope `search` (docs/PRIVACY.md), never by hand in a space: the
    # search's calibration chose this run's sigma; None: calibrated from target_epsilon.
    noise_multiplier: PositiveNumber | None = None
    # Std of the Gaussian noise on the count of correct validation predictions; None: exact scores.
    score_noise: PositiveNumber | None = None
    # Whether training loss/accuracy (computed on private batches without noise, so not covered by
    # epsilon) leave the run. Off by default: only accounted numbers leave a run unless asked.
    release_train_metrics: Bool = False


class TrainingConfig(Block):
    batch_size: Count = 256  # expected logical batch size: the sample rate is batch_size / train size
    steps: Count | None = None  # exactly one of steps / epochs
    epochs: PositiveNumber | None = None
    augmult: Count = 1  # augmentation multiplicity K
    crop_padding: Annotated[Int, Field(ge=0)] = 4
    hflip: Bool | None = None  # None: whatever the data set allows
    optimizer: Literal["sgd"] = "sgd"
    lr: PositiveNumber = 2.0
    momentum: UnitInterval = 0.0
    nesterov: Bool = False
    weight_decay: Annotated[Number, Field(ge=0)] = 0.0
    ema_decay: UnitInterval | None = 0.999
    physical_batch_size: Count = 256  # augmented inputs per forward/backward; memory knob only
    eval_every: Count | None = None  # steps between validation passes; None: once per epoch
    eval_batch_size: Count = 1024

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> TrainingConfig:
        if self.nesterov and self.momentum == 0:
            raise fail("Nesterov momentum needs momentum > 0", at=("nesterov",))
        return self


class RunConfig(Block):
    name: Str = "run"
    seed: Int = 0  # model init, data split, augmentation: public randomness
    device: Str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="after")
    def _steps_or_epochs(self, info: ValidationInfo) -> RunConfig:
        """Exactly one length of training; when an override clashes with the file, say which key to unset."""
        t = self.training
        if (t.steps is None) != (t.epochs is None):
            return self
        source: Source = (info.context or {}).get("source") or Source()
        paths = {name: ("training", name) for name in ("steps", "epochs")}
        overridden = [name for name, path in paths.items() if source.override_of(path) == f"training.{name}"]
        if t.steps is None:
            raise fail(
                "set exactly one of 'steps' and 'epochs': neither is set; "
                "add e.g. training.epochs: 10 to the config, or --set training.steps=1000",
                at=paths[overridden[0]] if overridden else ("training",),
            )
        if len(overridden) == 1:  # the user's --set wins: unset the other one
            other = "epochs" if overridden[0] == "steps" else "steps"
            raise fail(
                f"set exactly one of 'steps' and 'epochs': the config also sets 'training.{other}' "
                f"({source.origin(paths[other])}); unset it with --set training.{other}=null",
                at=paths[overridden[0]],
            )
        raise fail(
            "set exactly one of 'steps' and 'epochs': both are set; unset one "
            "(e.g. --set training.epochs=null to train by steps)",
            at=("training",),
        )


# ------------------------------------------------------------------------------------------
# The keys of a run config, by dotted name (search spaces name keys this way)
# ------------------------------------------------------------------------------------------


@functools.cache
def config_keys() -> dict[str, tuple[type[BaseModel], str]]:
    """Every dotted leaf key of RunConfig -> (the block that holds it, its field name).

    `model.options` is free-form (the model registry checks it), so it is a leaf here.
    """
    out: dict[str, tuple[type[BaseModel], str]] = {}

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for name, info in cls.model_fields.items():
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                walk(info.annotation, f"{prefix}{name}.")
            else:
                out[prefix + name] = (cls, name)

    walk(RunConfig, "")
    return out


@functools.cache
def key_type(key: str) -> TypeAdapter:
    """A validator for one dotted key, with the same type and error as inside a whole config."""
    cls, name = config_keys()[key]
    info = cls.model_fields[name]
    return TypeAdapter(Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation)


def default_of(key: str) -> Any:
    """The default of a dotted key (None for a key with no default, e.g. training.steps)."""
    cls, name = config_keys()[key]
    return cls.model_fields[name].get_default(call_default_factory=True)


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------


def parse_config(data: dict[str, Any] | None, source: Source | None = None) -> RunConfig:
    """Validate plain data (what YAML gives) into a RunConfig; errors name the line when `source` knows it."""
    try:
        return RunConfig.model_validate(data or {}, context={"source": source})
    except ValidationError as exc:
        raise as_error(exc, source, ConfigError) from None


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    return config.model_dump()


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a run config from YAML (or start from the defaults), apply `--set` overrides, validate."""
    data, source = read_yaml(path, "config") if path is not None else ({}, Source())
    apply_overrides(data, overrides or [], source)
    return parse_config(data, source)


__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "PrivacyConfig",
    "RunConfig",
    "TrainingConfig",
    "apply_overrides",
    "config_keys",
    "config_to_dict",
    "default_of",
    "key_type",
    "load_config",
    "parse_config",
]
