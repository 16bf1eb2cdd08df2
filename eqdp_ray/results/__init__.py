"""Parquet results store for eqdp-ray tuning runs (queried by ``eqdp-ray best``).

See ``eqdp_ray.results.store`` for the on-disk layout and consistency rules.
"""

from __future__ import annotations

from eqdp_ray.results.errors import ResultsStoreError, SkippedFile, SkippedFileWarning
from eqdp_ray.results.export import FORMATS, export, format_table, to_csv, to_json
from eqdp_ray.results.query import NoResults, best_configs, emit_config, list_results, write_config
from eqdp_ray.results.report import build_report
from eqdp_ray.results.schema import (
    HISTORY_COLUMNS,
    METRIC_ALIASES,
    STATUSES,
    TRIAL_COLUMNS,
    config_from_row,
    flatten_config,
)
from eqdp_ray.results.store import DEFAULT_URI, EPSILON_TOL, CompactionResult, ResultsStore

__all__ = [
    "CompactionResult",
    "DEFAULT_URI",
    "EPSILON_TOL",
    "FORMATS",
    "HISTORY_COLUMNS",
    "METRIC_ALIASES",
    "ResultsStore",
    "ResultsStoreError",
    "STATUSES",
    "SkippedFile",
    "SkippedFileWarning",
    "TRIAL_COLUMNS",
    "config_from_row",
    "export",
    "flatten_config",
    "format_table",
    "to_csv",
    "to_json",
    "NoResults",
    "best_configs",
    "build_report",
    "emit_config",
    "list_results",
    "write_config",
]
