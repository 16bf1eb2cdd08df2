"""Column layout of the results store, row normalisation and schema unification.

Every row is normalised here before it is written, so that files written by one version
of eqdp-ray have predictable types (known columns always have their canonical type, even
when null), and files written by different versions can be merged on read with simple,
documented promotion rules (``merge_types``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from eqdp_ray.results.errors import ResultsStoreError

UTC_TS = pa.timestamp("us", tz="UTC")

#: Trial statuses a row may carry.
STATUSES: tuple[str, ...] = ("completed", "stopped_early", "failed", "running")
#: Statuses that ``best`` ranks: the trial produced a (possibly truncated) model.
RANKABLE_STATUSES: tuple[str, ...] = ("completed", "stopped_early")

#: Prefix of the flattened config columns.
CONFIG_PREFIX = "config."
#: Exact nested config as JSON, so ``config_from_row`` restores types losslessly.
CONFIG_JSON = "config_json"
#: Store-owned write time (UTC, microseconds, monotonic per process): last writer wins.
WRITTEN_AT = "written_at"

TRIAL_COLUMNS: dict[str, pa.DataType] = {
    "study": pa.string(),
    "trial_id": pa.string(),
    "status": pa.string(),
    "sigma": pa.float64(),
    "sample_rate": pa.float64(),
    "steps": pa.int64(),
    "epsilon": pa.float64(),
    "target_epsilon": pa.float64(),
    "delta": pa.float64(),
    "accountant": pa.string(),
    "best_val_accuracy": pa.float64(),
    "final_val_accuracy": pa.float64(),
    "test_accuracy": pa.float64(),
    "num_params": pa.int64(),
    "wall_time_s": pa.float64(),
    "device_seconds": pa.float64(),
    "package_version": pa.string(),
    "started_at": UTC_TS,
    "finished_at": UTC_TS,
    "search_epsilon": pa.float64(),
    "search_delta": pa.float64(),
    "budget_scope": pa.string(),
    "search_method": pa.string(),
    "search_epsilon_spent": pa.float64(),
    "trial_search_epsilon": pa.float64(),
    CONFIG_JSON: pa.string(),
    WRITTEN_AT: UTC_TS,
}

HISTORY_COLUMNS: dict[str, pa.DataType] = {
    "study": pa.string(),
    "trial_id": pa.string(),
    "epoch": pa.int64(),
    "step": pa.int64(),
    "train_loss": pa.float64(),
    "train_accuracy": pa.float64(),
    "val_accuracy": pa.float64(),
    "epsilon": pa.float64(),
    "samples_per_s": pa.float64(),
    "timestamp": UTC_TS,
    WRITTEN_AT: UTC_TS,
}

#: The search ledger: one row per event of one attempt of one trial (privacy.search.SearchLedger).
#: `reserve` rows carry the attempt's worst case, `settle` rows what it ran; an attempt without a
#: `settle` row (a killed trial or driver) counts at its reservation.
LEDGER_COLUMNS: dict[str, pa.DataType] = {
    "study": pa.string(),
    "trial_id": pa.string(),
    "attempt": pa.int64(),
    "event": pa.string(),
    "noise_multiplier": pa.float64(),
    "sample_rate": pa.float64(),
    "steps": pa.int64(),
    "score_noise": pa.float64(),
    "score_releases": pa.int64(),
    "plan_json": pa.string(),  # `plan` rows only: the study's privacy.search.SearchPlan
    "timestamp": UTC_TS,
    WRITTEN_AT: UTC_TS,
}
LEDGER_EVENTS: tuple[str, ...] = ("plan", "reserve", "settle")

#: Columns whose absence makes a Parquet file "foreign" (not written by this store).
KEY_COLUMNS: tuple[str, ...] = ("study", "trial_id")

#: Metric aliases accepted by ``best``.
METRIC_ALIASES: dict[str, str] = {"val_accuracy": "best_val_accuracy"}
#: Metrics always offered by ``best`` (other numeric columns are accepted too).
STANDARD_METRICS: tuple[str, ...] = (
    "best_val_accuracy",
    "final_val_accuracy",
    "test_accuracy",
    "epsilon",
    "wall_time_s",
    "device_seconds",
    "num_params",
)

_MISSING = object()


# --------------------------------------------------------------------------- values


def is_missing(value: Any) -> bool:
    """True for None, NaN, NaT and pd.NA: the values that mean "no value" in a row."""
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    if isinstance(value, np.datetime64):
        return bool(np.isnat(value))
    return False


def _plain(value: Any) -> Any:
    """Numpy/pandas scalars -> Python scalars, so type inference sees int/float/bool/str."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, (_dt.datetime, _dt.date, pd.Timestamp)):
        return value.isoformat()
    return str(value)


def to_json(value: Any) -> str:
    """JSON text of a config-like value; non-JSON leaves (numpy, objects) degrade to text."""
    return json.dumps(value, default=_json_default, sort_keys=False)


def to_timestamp(value: Any, column: str) -> _dt.datetime | None:
    """Coerce a timestamp-like value to an aware UTC datetime.

    Accepts datetimes (naive ones are taken as UTC), pandas/numpy timestamps, ISO strings
    and POSIX seconds (int/float), because Tune callbacks report time in all of these.
    """
    if is_missing(value):
        return None
    value = _plain(value)
    try:
        if isinstance(value, bool):
            raise TypeError("bool is not a timestamp")
        if isinstance(value, (int, float)):
            ts = pd.Timestamp(value, unit="s", tz="UTC")
        elif isinstance(value, (str, _dt.datetime, _dt.date, pd.Timestamp, np.datetime64)):
            ts = pd.Timestamp(value)
            ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        else:
            raise TypeError(f"unsupported type {type(value).__name__}")
    except (TypeError, ValueError) as exc:
        raise ResultsStoreError(f"column {column!r}: cannot read {value!r} as a timestamp ({exc})") from exc
    return ts.to_pydatetime()


def _to_float(value: Any, column: str) -> float | None:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    try:
        return float(_plain(value))
    except (TypeError, ValueError) as exc:
        raise ResultsStoreError(f"column {column!r} must be a number, got {value!r}") from exc


def _to_int(value: Any, column: str) -> int | None:
    if is_missing(value):
        return None
    value = _plain(value)
    try:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError("not integral")
            return int(value)
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ResultsStoreError(f"column {column!r} must be an integer, got {value!r}") from exc


def _to_str(value: Any, column: str) -> str | None:
    if is_missing(value):
        return None
    return str(_plain(value))


def coerce(value: Any, dtype: pa.DataType, column: str) -> Any:
    """Coerce one value of a known column to its canonical type (or raise ResultsStoreError)."""
    if pa.types.is_floating(dtype):
        return _to_float(value, column)
    if pa.types.is_integer(dtype):
        return _to_int(value, column)
    if pa.types.is_timestamp(dtype):
        return to_timestamp(value, column)
    return _to_str(value, column)


# --------------------------------------------------------------------------- config


def flatten_config(config: Mapping[str, Any], prefix: str = CONFIG_PREFIX) -> dict[str, Any]:
    """Nested config -> ``{"config.a.b": leaf}``; one column per leaf so it can be queried.

    Lists, tuples and other containers become JSON text (one column, not one per element);
    empty dicts produce no column (``config_json`` still has them).
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_config(value, prefix=name + "."))
        else:
            out[name] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "a.c": 2}`` -> ``{"a": {"b": 1, "c": 2}}``.

    If a dotted key collides with a leaf (``"a"`` and ``"a.b"``), the later key is kept
    verbatim at the level of the collision instead of failing.
    """
    out: dict[str, Any] = {}
    for key in sorted(flat):
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part, _MISSING)
            if child is _MISSING:
                child = node[part] = {}
            if not isinstance(child, dict):
                node[".".join(parts[i:])] = flat[key]
                break
            node = child
        else:
            node[parts[-1]] = flat[key]
    return out


def config_from_row(row: Mapping[str, Any] | pd.Series) -> dict[str, Any]:
    """Rebuild the nested trial config from a row returned by the store.

    Uses the exact ``config_json`` column when present (so ints stay ints even where
    pandas made the column float because other trials lack the key). Rows without it
    (written by something else) fall back to the ``config.*`` columns, dropping
    NaN/None (= key absent for this trial) and converting numpy scalars to Python ones;
    in that fallback an int column with gaps comes back as float, as pandas read it.
    """
    items = row.items() if hasattr(row, "items") else dict(row).items()
    data = dict(items)
    raw = data.get(CONFIG_JSON)
    if isinstance(raw, str) and raw:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    flat = {
        key[len(CONFIG_PREFIX) :]: _plain(value)
        for key, value in data.items()
        if isinstance(key, str) and key.startswith(CONFIG_PREFIX) and not is_missing(value)
    }
    return unflatten(flat)


# --------------------------------------------------------------------------- rows -> Arrow


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -(2**63) <= value < 2**63 else "str"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (_dt.datetime, pd.Timestamp)):
        return "ts"
    return "str"


def _infer_column(values: list[Any]) -> tuple[pa.DataType, list[Any]] | None:
    """Type and converted values of a free-form (config/extra) column; None if all missing.

    Promotion within a batch mirrors ``merge_types``: bool < int < float; anything mixed
    with text becomes text.
    """
    plain: list[Any] = []
    kinds: set[str] = set()
    for value in values:
        if is_missing(value):
            plain.append(None)
            continue
        value = _plain(value)
        if isinstance(value, (Mapping, list, tuple, set, frozenset, np.ndarray)):
            value = to_json(value)
        elif isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
            value = value.isoformat()
        elif not isinstance(value, (bool, int, float, str, _dt.datetime, pd.Timestamp)):
            value = str(value)
        plain.append(value)
        kinds.add(_kind(value))
    if not kinds:
        return None
    if kinds == {"ts"}:
        return UTC_TS, [to_timestamp(v, "") if v is not None else None for v in plain]
    if kinds <= {"bool", "int", "float"}:
        if "float" in kinds:
            return pa.float64(), [None if v is None else float(v) for v in plain]
        if "int" in kinds:
            return pa.int64(), [None if v is None else int(v) for v in plain]
        return pa.bool_(), plain
    return pa.string(), [
        None if v is None else (v.isoformat() if isinstance(v, _dt.datetime) else str(v)) for v in plain
    ]


def normalize_trial(row: Mapping[str, Any], package_version: str) -> dict[str, Any]:
    """Validate one trial row and split its config into ``config.*`` + ``config_json``.

    The config may be given as a nested ``config`` mapping, as an existing
    ``config_json`` (e.g. a row read back from the store and re-written), or as flat
    ``config.*`` keys, in that order of precedence. ``noise_multiplier`` is accepted for
    ``sigma``. ``written_at`` is always set by the store, never taken from the row.
    """
    if not isinstance(row, Mapping):
        raise ResultsStoreError(f"a trial row must be a mapping, got {type(row).__name__}")
    data: dict[str, Any] = {str(k): v for k, v in row.items()}
    data.pop(WRITTEN_AT, None)
    data.pop("rank", None)  # added by best(); not part of a trial
    if is_missing(data.get("sigma")) and "noise_multiplier" in data:
        data["sigma"] = data.pop("noise_multiplier")

    config = data.pop("config", None)
    config_json = data.pop(CONFIG_JSON, None)
    flat_keys = {k: data.pop(k) for k in [k for k in data if k.startswith(CONFIG_PREFIX)]}
    if config is not None:
        if not isinstance(config, Mapping):
            raise ResultsStoreError(f"'config' must be a mapping, got {type(config).__name__}")
        nested = dict(config)
    elif isinstance(config_json, str) and config_json:
        try:
            nested = json.loads(config_json)
        except ValueError as exc:
            raise ResultsStoreError(f"'config_json' is not valid JSON: {exc}") from exc
        if not isinstance(nested, dict):
            raise ResultsStoreError("'config_json' must encode a JSON object")
    else:
        nested = unflatten({k[len(CONFIG_PREFIX) :]: v for k, v in flat_keys.items() if not is_missing(v)})

    for key in KEY_COLUMNS:
        value = data.get(key)
        if is_missing(value) or str(value) == "":
            raise ResultsStoreError(f"a trial row needs a non-empty {key!r}; got keys {sorted(row)}")
    status = data.get("status")
    if status not in STATUSES:
        raise ResultsStoreError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
    if is_missing(data.get("package_version")):
        data["package_version"] = package_version

    out: dict[str, Any] = {}
    for name, dtype in TRIAL_COLUMNS.items():
        if name in (CONFIG_JSON, WRITTEN_AT):
            continue
        out[name] = coerce(data.pop(name, None), dtype, name)
    out[CONFIG_JSON] = to_json(nested)
    out.update(flatten_config(nested))
    for key, value in data.items():  # free-form extras
        out[key] = value
    return out


def normalize_history(row: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one history (per-epoch) row; known columns get canonical types."""
    if not isinstance(row, Mapping):
        raise ResultsStoreError(f"a history row must be a mapping, got {type(row).__name__}")
    data: dict[str, Any] = {str(k): v for k, v in row.items()}
    data.pop(WRITTEN_AT, None)
    for key in KEY_COLUMNS:
        value = data.get(key)
        if is_missing(value) or str(value) == "":
            raise ResultsStoreError(f"a history row needs a non-empty {key!r}; got keys {sorted(row)}")
    out: dict[str, Any] = {}
    for name, dtype in HISTORY_COLUMNS.items():
        if name == WRITTEN_AT:
            continue
        out[name] = coerce(data.pop(name, None), dtype, name)
    out.update(data)
    return out


def normalize_ledger(row: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one ledger row: every column is required except score_noise (None: no score released)."""
    if not isinstance(row, Mapping):
        raise ResultsStoreError(f"a ledger row must be a mapping, got {type(row).__name__}")
    data: dict[str, Any] = {str(k): v for k, v in row.items()}
    data.pop(WRITTEN_AT, None)
    if data.get("event") not in LEDGER_EVENTS:
        raise ResultsStoreError(f"a ledger event is one of {LEDGER_EVENTS}, got {data.get('event')!r}")
    needed = ("plan_json",) if data["event"] == "plan" else ("noise_multiplier", "sample_rate", "steps")
    for key in ("study", "trial_id", "attempt", "timestamp", *needed):
        if is_missing(data.get(key)) or str(data.get(key)) == "":
            raise ResultsStoreError(f"a ledger row needs {key!r}; got keys {sorted(row)}")
    out = {
        name: coerce(data.pop(name, None), dtype, name) for name, dtype in LEDGER_COLUMNS.items() if name != WRITTEN_AT
    }
    if data:
        raise ResultsStoreError(f"unknown ledger columns {sorted(data)}")
    return out


def rows_to_table(rows: list[dict[str, Any]], canonical: Mapping[str, pa.DataType], written_at: list[int]) -> pa.Table:
    """Normalised rows -> Arrow table: canonical columns typed, free columns inferred.

    ``study`` is dictionary-encoded because files live under hive-style ``study=<name>``
    directories: pyarrow (and so ``pandas.read_parquet``) infers that partition field as
    ``dictionary<int32, string>`` and refuses to merge it with a plain string column.
    Free columns whose values are all missing are left out (absent == null on read), so
    no file carries an untyped ``null`` column.
    """
    arrays: dict[str, pa.Array] = {}
    for name, dtype in canonical.items():
        if name == WRITTEN_AT:
            arrays[name] = pa.array(written_at, type=pa.int64()).cast(UTC_TS)
            continue
        arrays[name] = pa.array([r.get(name) for r in rows], type=dtype)
    arrays["study"] = arrays["study"].dictionary_encode()
    extra_names = sorted({k for r in rows for k in r} - set(canonical))
    for name in extra_names:
        inferred = _infer_column([r.get(name) for r in rows])
        if inferred is None:
            continue
        dtype, values = inferred
        arrays[name] = pa.array(values, type=dtype)
    return pa.table(arrays)


# --------------------------------------------------------------------------- unification


def _base_type(dtype: pa.DataType) -> pa.DataType:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    is_view = getattr(pa.types, "is_string_view", lambda _t: False)
    if pa.types.is_large_string(dtype) or is_view(dtype):
        return pa.string()
    return dtype


def _is_numeric(dtype: pa.DataType) -> bool:
    return pa.types.is_boolean(dtype) or pa.types.is_integer(dtype) or pa.types.is_floating(dtype)


def _is_nested(dtype: pa.DataType) -> bool:
    return pa.types.is_nested(dtype) or pa.types.is_map(dtype)


def merge_types(types: Iterable[pa.DataType]) -> pa.DataType | None:
    """One read type for a column seen with several types across files.

    Rules: null is absorbed by anything; identical types stay; timestamps -> UTC
    microseconds; bool/int/float -> the widest (bool < int64 < float64); anything else
    mixed (e.g. str vs number) -> string. Returns None for a conflict that has no safe
    cast (nested types that differ), so the caller drops that column.
    """
    seen: list[pa.DataType] = []
    for dtype in types:
        dtype = _base_type(dtype)
        if pa.types.is_null(dtype):
            continue
        if not any(dtype.equals(s) for s in seen):
            seen.append(dtype)
    if not seen:
        return pa.null()
    if len(seen) == 1:
        return seen[0]
    if any(_is_nested(t) for t in seen):
        return None
    if all(pa.types.is_timestamp(t) for t in seen):
        return UTC_TS
    if all(_is_numeric(t) for t in seen):
        if any(pa.types.is_floating(t) for t in seen):
            return pa.float64()
        if any(pa.types.is_integer(t) for t in seen):
            return pa.int64()
        return pa.bool_()
    return pa.string()


def readable_as(dtype: pa.DataType, canonical: pa.DataType) -> bool:
    """Whether a file's column of type ``dtype`` can be read as a column of ``canonical`` type.

    Numbers read as numbers (bool < int < float, as ``merge_types``), timestamps as timestamps,
    anything flat as text; a missing (null) column as anything. Text where a number or a
    timestamp belongs (``best_val_accuracy: "high"``) is not: it would turn the store's metric
    column into text for every file, so such a file is skipped instead (``canonical_conflicts``).
    """
    dtype, canonical = _base_type(dtype), _base_type(canonical)
    if pa.types.is_null(dtype) or dtype.equals(canonical):
        return True
    if _is_nested(dtype) or _is_nested(canonical):
        return False
    if _is_numeric(canonical):
        return _is_numeric(dtype)
    if pa.types.is_timestamp(canonical):
        return pa.types.is_timestamp(dtype)
    return pa.types.is_string(canonical)


def canonical_conflicts(schema: pa.Schema, canonical: Mapping[str, pa.DataType]) -> list[str]:
    """Why a file cannot be read with the others, one phrase per canonical column of the wrong type."""
    return [
        f"column {field.name!r} is {_base_type(field.type)}, not {canonical[field.name]}"
        for field in schema
        if field.name in canonical and not readable_as(field.type, canonical[field.name])
    ]


def unify_schemas(schemas: Iterable[pa.Schema], canonical: Mapping[str, pa.DataType]) -> tuple[pa.Schema, list[str]]:
    """Unified read schema over many files, canonical columns first (always present).

    Returns the schema and the names of columns dropped for irreconcilable types.
    Column order: canonical (minus bookkeeping), ``config.*`` sorted, other extras
    sorted, then ``config_json``/``written_at``: stable output whatever the file order.
    A canonical column keeps its kind whatever the files say: a type it cannot be read as
    (``readable_as``) is ignored here, and the store skips such files (``canonical_conflicts``).
    """
    unique: dict[str, pa.Schema] = {}  # files mostly share a schema: merge each once
    for schema in schemas:
        unique.setdefault(schema.to_string(show_field_metadata=False, show_schema_metadata=False), schema)
    by_name: dict[str, list[pa.DataType]] = {name: [dtype] for name, dtype in canonical.items()}
    for schema in unique.values():
        for field in schema:
            if field.name in canonical and not readable_as(field.type, canonical[field.name]):
                continue
            by_name.setdefault(field.name, []).append(field.type)
    dropped: list[str] = []
    merged: dict[str, pa.DataType] = {}
    for name, types in by_name.items():
        dtype = merge_types(types)
        if dtype is None:
            dropped.append(name)
        else:
            merged[name] = dtype
    tail = [n for n in (CONFIG_JSON, WRITTEN_AT) if n in merged]
    head = [n for n in canonical if n in merged and n not in tail]
    rest = [n for n in merged if n not in canonical]
    config = sorted(n for n in rest if n.startswith(CONFIG_PREFIX))
    extras = sorted(n for n in rest if not n.startswith(CONFIG_PREFIX))
    order = head + config + extras + tail
    return pa.schema([(n, merged[n]) for n in order]), dropped
