"""Searched keys: the distribution each one is drawn from, and the condition under which it applies.

Parsed values are frozen (lists become tuples) so that a parsed space is hashable and can be
compared; `thaw` gives the plain values back for a run config.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Discriminator, Tag, field_validator, model_validator

from eqdp_ray.config.types import Block, Bool, Count, Int, Number, PositiveNumber, fail

# ------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------


def freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    return value


def thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def canon(value: Any) -> str:
    return json.dumps(thaw(value), sort_keys=True, default=str)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


# ------------------------------------------------------------------------------------------
# Searched keys: one distribution each
# ------------------------------------------------------------------------------------------


def _parse_when(spec: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if spec is None:
        return ()
    if isinstance(spec, tuple):  # already parsed (a copy of a parsed distribution)
        return spec
    if not isinstance(spec, dict) or not spec:
        raise fail(
            "when: expects a mapping of config keys to a value or a list of values, e.g. when: {model.name: eq_resnet9}"
        )
    out = []
    for parent, allowed in spec.items():
        values = tuple(freeze(v) for v in allowed) if isinstance(allowed, list) else (freeze(allowed),)
        if not values:
            raise fail("an empty list of values can never hold", at=(str(parent),))
        out.append((str(parent), values))
    return tuple(out)


class _Distribution(Block):
    """One searched key: where its values come from, and when it applies (all of `when` must hold)."""

    model_config = ConfigDict(frozen=True)

    when: Annotated[tuple[tuple[str, tuple[Any, ...]], ...], BeforeValidator(_parse_when)] = ()

    @property
    def encoded(self) -> bool:
        """Optuna stores only scalar choices; lists (layouts) travel as JSON text."""
        return False

    def active(self, values: Mapping[str, Any]) -> bool:
        return all(key in values and canon(values[key]) in {canon(v) for v in allowed} for key, allowed in self.when)

    def decode(self, value: Any) -> Any:
        if self.encoded and isinstance(value, str):
            return json.loads(value)
        return value


class Categorical(_Distribution):
    type: Literal["categorical"]
    choices: tuple[Any, ...]

    @field_validator("choices", mode="before")
    @classmethod
    def _choices(cls, value: Any) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)) or not value:
            raise fail("categorical needs a non-empty list of choices")
        keys = [canon(c) for c in value]
        if len(set(keys)) != len(keys):
            raise fail(f"repeated choice in {thaw(list(value))!r}")
        return tuple(freeze(c) for c in value)

    @property
    def encoded(self) -> bool:
        return any(not _is_scalar(c) for c in self.choices)

    def suggest(self, trial: Any, name: str) -> Any:
        """Ask a define-by-run trial (Optuna's interface) for a value; returns the decoded value."""
        if self.encoded:
            return json.loads(trial.suggest_categorical(name, [json.dumps(c) for c in self.choices]))
        return trial.suggest_categorical(name, list(self.choices))

    def corners(self) -> list[Any]:
        """The values a check must try: every choice."""
        return list(self.choices)

    def support(self, limit: int) -> list[Any] | None:
        return list(self.choices)


class _Range(_Distribution):
    @model_validator(mode="after")
    def _non_empty(self) -> _Range:
        low, high, step = self.low, self.high, self.step  # type: ignore[attr-defined]
        if low >= high:
            raise fail(
                f"empty range: low={low!r} must be below high={high!r} (to hold one value, put the key under 'fixed')"
            )
        if step is not None:
            if self.log and (step != 1 or self.type != "int"):  # type: ignore[attr-defined]
                raise fail("step cannot be combined with a log scale", at=("step",))
            if step > high - low:
                raise fail(f"step={step!r} is larger than the range {low!r}..{high!r}", at=("step",))
        if self.log and low <= 0:
            raise fail(f"a log scale needs low > 0, got {low!r}", at=("low",))
        return self

    def suggest(self, trial: Any, name: str) -> Any:
        if self.type == "int":  # type: ignore[attr-defined]
            return trial.suggest_int(name, self.low, self.high, step=self.step or 1, log=self.log)  # type: ignore[attr-defined]
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)  # type: ignore[attr-defined]


class IntRange(_Range):
    type: Literal["int"]
    low: Int
    high: Int
    step: Count | None = None
    log: Bool = False

    def corners(self) -> list[int]:
        """Both ends of the range (the top one on the step grid)."""
        step = self.step or 1
        return [self.low, self.low + (self.high - self.low) // step * step]

    def support(self, limit: int) -> list[int] | None:
        """Every value, or None if there are more than `limit`."""
        values = list(range(self.low, self.high + 1, self.step or 1))
        return values if len(values) <= limit else None


class FloatRange(_Range):
    type: Literal["float"]
    low: Number
    high: Number
    step: PositiveNumber | None = None
    log: Bool = False

    def corners(self) -> list[float]:
        return [self.low, self.high]

    def support(self, limit: int) -> list[float] | None:
        """Every value of a stepped range, or None if there are more than `limit` (or infinitely many)."""
        if self.step:
            count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            if count <= limit:
                return [self.low + i * self.step for i in range(count)]
        return None


class LogUniform(FloatRange):
    """Shorthand for {type: float, log: true}."""

    type: Literal["loguniform"]  # type: ignore[assignment]
    step: None = None
    log: Literal[True] = True


DISTRIBUTIONS = ("categorical", "int", "float", "loguniform")


def _distribution_spec(spec: Any) -> Any:
    if isinstance(spec, _Distribution):
        return spec
    if not isinstance(spec, dict):
        raise fail(
            "a searched key needs a distribution, e.g. {type: categorical, choices: [a, b]} "
            "or {type: float, low: 0.1, high: 1.0, log: true}; to hold a value constant put it under 'fixed'"
        )
    if spec.get("type") not in DISTRIBUTIONS:
        raise fail(f"type must be one of {', '.join(DISTRIBUTIONS)}, got {spec.get('type')!r}", at=("type",))
    return spec


def _distribution_tag(spec: Any) -> str:
    return "~" + str(spec.get("type") if isinstance(spec, dict) else getattr(spec, "type", ""))


Distribution = Annotated[
    Annotated[Categorical, Tag("~categorical")]
    | Annotated[IntRange, Tag("~int")]
    | Annotated[FloatRange, Tag("~float")]
    | Annotated[LogUniform, Tag("~loguniform")],
    Discriminator(_distribution_tag),
    BeforeValidator(_distribution_spec),
]
