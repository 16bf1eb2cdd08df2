"""Render result DataFrames for the CLI: aligned text, JSON, CSV.

Kept free of store logic so the CLI can format any DataFrame it gets (best, list_studies,
history) the same way.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from eqdp_ray.results.errors import ResultsStoreError

FORMATS: tuple[str, ...] = ("table", "json", "csv")


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 trial"``, ``"2 trials"``: counts in messages read as English (``many`` for irregular plurals)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def _cell(value: Any) -> str:
    if value is None or value is pd.NaT or value is pd.NA:
        return "-"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4f}"
    if isinstance(value, (pd.Timestamp, _dt.datetime)):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def is_epsilon_column(column: Any) -> bool:
    """Columns holding an epsilon (spent, target, search-level): shown rounded up, never down."""
    return "epsilon" in str(column)


def format_cell(column: Any, value: Any) -> str:
    """One cell as text for people (tables, the report's page): an epsilon rounded up (`format_epsilon`), so it never
    claims more privacy than accounted; other floats with 4 decimals (scientific when tiny/huge)."""
    if is_epsilon_column(column) and isinstance(value, (float, np.floating)) and not math.isnan(value):
        from eqdp_ray.privacy import format_epsilon  # lazily: the results layer loads without torch

        return format_epsilon(float(value))
    return _cell(value)


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def format_table(df: pd.DataFrame, columns: Sequence[str] | None = None, *, max_width: int = 40) -> str:
    """Aligned plain-text table (numbers right-aligned, text left) for terminals.

    Missing values show as ``-``; floats with 4 decimals (scientific when tiny/huge), epsilons with 4
    significant digits rounded up;
    timestamps to the second; cells longer than ``max_width`` are cut with ``...``.
    Unknown column names raise ResultsStoreError listing the available ones.
    """
    cols = list(df.columns) if columns is None else list(columns)
    unknown = [c for c in cols if c not in df.columns]
    if unknown:
        raise ResultsStoreError(f"unknown column(s) {unknown}; available: {', '.join(map(str, df.columns))}")
    if not cols:
        return ""

    def clip(text: str) -> str:
        return text if len(text) <= max_width else text[: max(1, max_width - 3)] + "..."

    cells = [[clip(format_cell(c, v)) for v in df[c].tolist()] for c in cols]
    headers = [clip(str(c)) for c in cols]
    widths = [max([len(h)] + [len(x) for x in col]) for h, col in zip(headers, cells)]
    right = [_numeric(df[c]) for c in cols]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line([col[i] for col in cells]) for i in range(len(df))]
    return "\n".join(out)


def to_json(df: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """JSON array of row objects (ISO-8601 timestamps, null for missing).

    Floats are written exactly (shortest round-trip text): pandas' encoder rounds to 10 decimals, to nearest, which
    would print an epsilon spent of 1.00000000004 as 1.0, below what was accounted.
    """
    frame = df if columns is None else df[list(columns)]
    records = json.loads(frame.to_json(orient="records", date_format="iso", date_unit="us"))
    for name in frame.columns:
        if pd.api.types.is_float_dtype(frame[name]):
            for record, value in zip(records, frame[name].tolist()):
                record[str(name)] = None if value is None or not math.isfinite(value) else float(value)
    return json.dumps(records, indent=2)


def to_csv(df: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """CSV with a header row; missing values are empty fields."""
    frame = df if columns is None else df[list(columns)]
    return frame.to_csv(index=False)


def export(df: pd.DataFrame, fmt: str = "table", columns: Sequence[str] | None = None) -> str:
    """Render ``df`` as ``table``, ``json`` or ``csv`` (the CLI's ``--format``)."""
    if fmt == "table":
        return format_table(df, columns)
    if columns is not None:
        unknown = [c for c in columns if c not in df.columns]
        if unknown:
            raise ResultsStoreError(f"unknown column(s) {unknown}; available: {', '.join(map(str, df.columns))}")
    if fmt == "json":
        return to_json(df, columns)
    if fmt == "csv":
        return to_csv(df, columns)
    raise ResultsStoreError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
