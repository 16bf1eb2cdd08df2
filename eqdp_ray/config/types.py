"""The value types of config keys, shared by run configs and search spaces, and the error formatter.

A key has one type wherever it appears (a run config, a space's `data`/`privacy` blocks, a `fixed`
value, a searched choice), so it also has one error. Integers are strict: `256.0` is not a batch
size. Whether a size is a count or a fraction is decided by how it is written, never by its value:

- an integer (`5000`, no decimal point) is a **count** of examples, at least 1;
- a number with a decimal point (`0.1`) is a **fraction** of the training data, in (0, 1).

So `val_size: 5000` holds out 5,000 examples, `val_size: 0.1` a tenth, and `val_size: 5000.0` or
`val_size: 1.0` is an error that says so.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from eqdp_ray.config.errors import ConfigError
from eqdp_ray.config.source import KeyPath, Source

ERROR = "eqdp"  # the pydantic error type of every message written here


def fail(message: str, at: KeyPath = ()) -> PydanticCustomError:
    """An error to raise inside a validator; `at` is the key path below the one being validated."""
    return PydanticCustomError(ERROR, "{message}", {"message": message, "at": "\0".join(at)})


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise fail(f"expected a number, got {value!r}")
    return value


def _finite_number(value: Any) -> Any:
    value = _not_bool(value)
    if isinstance(value, str):  # YAML reads 1e-5 (no decimal point) as a string
        try:
            return float(value)
        except ValueError:
            raise fail(f"expected a number, got {value!r}") from None
    return value


Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Number = Annotated[float, BeforeValidator(_finite_number), Field(allow_inf_nan=False)]
PositiveNumber = Annotated[Number, Field(gt=0)]
Count = Annotated[Int, Field(ge=1)]


def _count_or_fraction(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(f"expected a count (an integer, e.g. 5000) or a fraction (e.g. 0.1), got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise fail(f"a count must be >= 1, got {value}")
        return value
    if not 0 < value < 1:
        hint = f"; to mean a count write it as an integer: {int(value)}" if value >= 1 and value.is_integer() else ""
        raise fail(f"{value!r} is a fraction (it has a decimal point) and must lie in (0, 1){hint}")
    return value


#: A size of examples: an integer is a count, a number with a decimal point a fraction (see above).
CountOrFraction = Annotated[int | float, BeforeValidator(_count_or_fraction)]


def _no_unknown_keys(cls: type[BaseModel], data: Any) -> Any:
    if isinstance(data, dict):
        allowed = list(cls.model_fields)
        for key in data:
            if key not in allowed:
                raise fail(unknown_key_message(str(key), allowed), at=(str(key),))
    return data


def unknown_key_message(key: str, allowed: Iterable[str], what: str = "key") -> str:
    """The message for an unknown key: the closest valid one as a hint, and the valid keys unless they are many."""
    allowed = list(allowed)
    close = difflib.get_close_matches(key, allowed, n=1)
    if close and len(allowed) > 20:  # e.g. every dotted config key: the hint says enough
        return f"unknown {what}; did you mean '{close[0]}'?"
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown {what}; {hint}valid keys here: {', '.join(allowed)}"


class Block(BaseModel):
    """A mapping of known keys: an unknown one is an error at its own line, with a 'did you mean'."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return _no_unknown_keys(cls, data)


def _message(error: dict[str, Any]) -> tuple[KeyPath, str]:
    """One pydantic error -> (key path, what is wrong), in the words of this project."""
    loc = tuple(str(p) for p in error["loc"] if not str(p).startswith("~"))  # "~tag": a union member
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == ERROR:
        at = tuple(p for p in str(ctx.get("at", "")).split("\0") if p)
        return loc + at, str(ctx["message"])
    got = f", got {value!r}"
    words = {
        "int_type": "expected an integer" + got,
        "int_parsing": "expected an integer" + got,
        "int_from_float": "expected an integer (no decimal point)" + got,
        "bool_type": "expected true or false" + got,
        "bool_parsing": "expected true or false" + got,
        "float_type": "expected a number" + got,
        "float_parsing": "expected a number" + got,
        "finite_number": "expected a finite number" + got,
        "string_type": "expected a string" + got,
        "dict_type": "expected a mapping of keys" + got,
        "model_type": "expected a mapping of keys" + got,
        "model_attributes_type": "expected a mapping of keys" + got,
        "list_type": "expected a list" + got,
        "tuple_type": "expected a list" + got,
        "missing": "is required",
        "extra_forbidden": "unknown key",
        "greater_than": f"must be > {ctx.get('gt')}" + got,
        "greater_than_equal": f"must be >= {ctx.get('ge')}" + got,
        "less_than": f"must be < {ctx.get('lt')}" + got,
        "less_than_equal": f"must be <= {ctx.get('le')}" + got,
        "literal_error": f"must be {ctx.get('expected')}" + got,
        "too_short": "must not be empty",
    }
    return loc, words.get(kind, error["msg"] + (got if "input" in error else ""))


def first_error(exc: ValidationError) -> tuple[KeyPath, str]:
    """The key path and message of the first error of a validation."""
    return _message(exc.errors(include_url=False)[0])


def format_error(exc: ValidationError, source: Source | None) -> str:
    """The first error of a validation, as `file:line: 'key': what is wrong`."""
    loc, message = first_error(exc)
    return (source or Source()).where(loc) + message


def as_error(exc: ValidationError, source: Source | None, error: type[ConfigError]) -> ConfigError:
    """The project's one-line error for a failed validation (raise it `from None`: no traceback to read)."""
    return error(format_error(exc, source))


__all__ = [
    "AfterValidator",
    "Block",
    "Bool",
    "Count",
    "CountOrFraction",
    "Int",
    "Number",
    "PositiveNumber",
    "Str",
    "fail",
    "first_error",
    "format_error",
    "as_error",
    "unknown_key_message",
]
