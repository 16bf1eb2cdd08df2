"""Parquet results store: one small immutable file per write, merged on read.

Layout under the store root (a local path or any pyarrow filesystem URI)::

    trials/study=<url-quoted study>/<trial_id>-<uuid>.parquet   one row (write_trial)
    trials/study=<...>/batch-<uuid>.parquet                     many rows (write_trials)
    trials/study=<...>/compacted-<uuid>.parquet                 output of compact()
    history/study=<...>/<trial_id>-<uuid>.parquet               per-epoch rows

Why this shape:

* **Concurrency without locks.** Writers never modify a file: every write creates a
  new, uniquely named file (a temp name + rename on local disks; object stores make a
  PUT visible atomically). Threads, processes and whole studies can write at once and
  no row is lost or torn. Readers ignore names starting with ``.`` or ``_`` (temp
  files), exactly as pyarrow/pandas do, and names ending in ``.tmp``. A writer killed
  mid-write (``kill -9``) leaves its hidden ``.<name>.<uuid>.tmp`` behind: never read, and
  listed in ``leftover_temp_files`` once older than ``LEFTOVER_TEMP_AGE_S`` (a younger one
  may be a write in flight); the store never deletes them.
* **Last writer wins.** Every row carries a store-set ``written_at`` (UTC, microseconds,
  strictly increasing within a process). On read, for each ``(study, trial_id)`` the
  row with the latest ``written_at`` is the trial (ties: latest ``finished_at``, then
  file name), so a trial written as ``running`` and then ``completed`` reads as
  completed. History rows are deduplicated the same way on ``(study, trial_id, epoch,
  step)``, so a restored trial that re-logs epochs does not double count.
* **Schema evolution.** Files may differ in columns and types; reads unify them
  (missing -> null; bool < int < float promote; text mixed with anything -> text;
  see ``schema.merge_types``).
* **Speed.** Reading costs one footer per file, so thousands of one-row files are slow
  (about 1 ms each locally, far more on object stores). Bulk importers should use
  ``write_trials`` (one file per call), and a tuning run should call ``compact(study)``
  when it ends: it rewrites the study as one file. ``best`` only scans the few columns
  it ranks on and reads full rows for the winners alone.
* **Foreign or damaged files** are warned about (``SkippedFileWarning``), listed in
  ``skipped_files`` and ignored; the store never modifies or deletes them. That includes
  a file whose store column has a type it cannot be read as (text in ``best_val_accuracy``):
  read with the others, it would make that column text for the whole study.
* **Readable without eqdp-ray.** ``pandas.read_parquet("<root>/trials")`` works on a
  store whose files agree on types (``study`` comes back as a categorical, because it
  is also the hive partition key); mixed-type stores need ``ResultsStore.read_trials``.
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from eqdp_ray import __version__
from eqdp_ray.config.storage import DEFAULT_STORE_URI, open_location
from eqdp_ray.results.errors import ResultsStoreError, SkippedFile, SkippedFileWarning
from eqdp_ray.results.schema import (
    HISTORY_COLUMNS,
    KEY_COLUMNS,
    LEDGER_COLUMNS,
    METRIC_ALIASES,
    RANKABLE_STATUSES,
    STANDARD_METRICS,
    STATUSES,
    TRIAL_COLUMNS,
    WRITTEN_AT,
    canonical_conflicts,
    normalize_history,
    normalize_ledger,
    normalize_trial,
    rows_to_table,
    unify_schemas,
)

DEFAULT_URI = DEFAULT_STORE_URI
TRIALS = "trials"
HISTORY = "history"
LEDGER = "ledger"
#: ``best(epsilon=E)`` keeps trials with ``|target_epsilon - E| <= EPSILON_TOL * max(1, |E|)``.
EPSILON_TOL = 1e-9

_FILENAME = "__filename"
#: Suffix of the temporary files of in-flight writes (``_write_file``); readers never open them.
TEMP_SUFFIX = ".tmp"
#: A temporary file older than this is a leftover of an interrupted write, not a write in flight.
LEFTOVER_TEMP_AGE_S = 600.0
_RETRIES = 12
_T = TypeVar("_T")

_clock_lock = threading.Lock()
_last_us = 0


def _now_us() -> int:
    """Wall-clock microseconds, strictly increasing within this process.

    Two writes of the same trial from one process therefore never tie, so "the later
    write wins" is exact locally and clock-accurate across processes.
    """
    global _last_us
    with _clock_lock:
        now = time.time_ns() // 1000
        if now <= _last_us:
            now = _last_us + 1
        _last_us = now
        return now


def _quote(name: str) -> str:
    return quote(name, safe="")


class _Vanished(Exception):
    """A listed file disappeared mid-read (a concurrent compact): re-list and retry."""


@dataclass(frozen=True)
class _Snapshot:
    """The readable files of one table (as listed now) and their unified schema."""

    table: str
    study: str | None
    fragments: tuple[tuple[str, ds.Fragment], ...]
    schema: pa.Schema


@dataclass(frozen=True)
class CompactionResult:
    """What ``compact`` did to one table of one study."""

    table: str
    study: str
    files_merged: int
    rows_read: int
    rows_written: int
    file: str | None


class ResultsStore:
    """Trial results and per-epoch history of eqdp-ray tuning runs, as Parquet files.

    ``uri`` is a local path (plain or ``file://``) or any URI pyarrow understands
    (``s3://bucket/prefix``, ``gs://...``). Nothing is created until the first write.
    See the module docstring for the layout and the consistency rules.
    """

    def __init__(self, uri: str | os.PathLike[str] = DEFAULT_URI, *, filesystem: pafs.FileSystem | None = None) -> None:
        self.uri = os.fspath(uri)
        if filesystem is not None:
            self.fs, root = filesystem, self.uri
        else:
            self.fs, root = open_location(self.uri)
        self.root = root.rstrip("/") or "/"
        self._local = self.fs.type_name == "local"
        self._format = ds.ParquetFileFormat()
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        #: Files reads have ignored (not Parquet, no study/trial_id, unreadable data).
        self.skipped_files: list[SkippedFile] = []
        #: Temporary files of interrupted writes that listings have passed over (never read, never deleted).
        self.leftover_temp_files: list[str] = []

    def __repr__(self) -> str:
        return f"ResultsStore({self.uri!r})"

    # ------------------------------------------------------------------ paths

    def check_location(self) -> None:
        """Say what is wrong when the store's location is missing or is a file: reading such a
        store would only report that it "holds no trials"."""
        try:
            kind = self.fs.get_file_info(self.root).type
        except OSError as exc:  # unreachable bucket, missing credentials
            raise ResultsStoreError(f"cannot read the results store {self.uri}: {exc}") from None
        where = "pass --store with the location that `eqdp-ray tune --store` wrote to"
        if kind == pafs.FileType.NotFound:
            raise ResultsStoreError(f"the results store {self.uri} does not exist; {where}")
        if kind != pafs.FileType.Directory:
            raise ResultsStoreError(f"the results store {self.uri} is a file, not a store directory; {where}")

    def table_path(self, table: str) -> str:
        """Path (on ``self.fs``) of the ``trials`` or ``history`` directory."""
        if table not in (TRIALS, HISTORY, LEDGER):
            raise ResultsStoreError(f"unknown table {table!r}; choose {TRIALS!r}, {HISTORY!r} or {LEDGER!r}")
        return f"{self.root}/{table}" if self.root != "/" else f"/{table}"

    @property
    def trials_path(self) -> str:
        """Directory holding the trial files, e.g. for ``pandas.read_parquet``."""
        return self.table_path(TRIALS)

    @property
    def history_path(self) -> str:
        """Directory holding the history files."""
        return self.table_path(HISTORY)

    def _study_path(self, table: str, study: str) -> str:
        return f"{self.table_path(table)}/study={_quote(study)}"

    # ------------------------------------------------------------------ writing

    def write_trial(self, row: Mapping[str, Any]) -> None:
        """Record one trial (as a new file); a later write of the same trial supersedes it."""
        self.write_trials([row])

    def write_trials(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Record many trials with one file per study: the fast path for bulk imports.

        All rows are validated before anything is written. Returns the number of rows.
        Within one call, a later row for the same trial supersedes an earlier one.
        """
        normalized = [normalize_trial(r, __version__) for r in rows]
        for study, group in _group_by_study(normalized).items():
            written = [_now_us() for _ in group]
            table = rows_to_table(group, TRIAL_COLUMNS, written)
            self._write_file(TRIALS, study, table, _file_name(group))
        return len(normalized)

    def write_history(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Record a batch of per-epoch rows (one file per study); returns the row count."""
        normalized = [normalize_history(r) for r in rows]
        for study, group in _group_by_study(normalized).items():
            written = [_now_us() for _ in group]
            table = rows_to_table(group, HISTORY_COLUMNS, written)
            self._write_file(HISTORY, study, table, _file_name(group))
        return len(normalized)

    def write_ledger(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Record search-ledger events (append-only: nothing is ever superseded); returns the row count."""
        normalized = [normalize_ledger(r) for r in rows]
        for study, group in _group_by_study(normalized).items():
            written = [_now_us() for _ in group]
            table = rows_to_table(group, LEDGER_COLUMNS, written)
            self._write_file(LEDGER, study, table, _file_name(group))
        return len(normalized)

    def read_ledger(self, study: str) -> pd.DataFrame:
        """Every ledger event of `study` in write order (empty if it has none)."""

        def run() -> pd.DataFrame:
            snap = self._snapshot(LEDGER, study)
            if not snap.fragments:
                return pd.DataFrame(columns=list(LEDGER_COLUMNS))
            table = self._scan(snap, snap.schema.names)
            table = table.drop_columns([_FILENAME]) if _FILENAME in table.column_names else table
            return table.sort_by([(WRITTEN_AT, "ascending")]).to_pandas()

        return self._retrying(run)

    def _write_file(self, table_name: str, study: str, table: pa.Table, name: str) -> str:
        """Write ``table`` so that readers see the whole file or nothing."""
        directory = self._study_path(table_name, study)
        self.fs.create_dir(directory, recursive=True)
        final = f"{directory}/{name}"
        if not self._local:  # object stores: a PUT becomes visible atomically
            pq.write_table(table, final, filesystem=self.fs)
            return final
        tmp = f"{directory}/.{name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
        try:
            pq.write_table(table, tmp, filesystem=self.fs)
            self.fs.move(tmp, final)
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except OSError:
                pass
            raise
        return final

    # ------------------------------------------------------------------ reading

    def read_trials(
        self,
        study: str | None = None,
        *,
        status: str | Sequence[str] | None = None,
        epsilon: float | None = None,
        trial_id: str | Sequence[str] | None = None,
        columns: Sequence[str] | None = None,
        latest_only: bool = True,
    ) -> pd.DataFrame:
        """Trials as a DataFrame, one row per (study, trial_id), sorted by those keys.

        Filters apply after superseded rows are dropped, so a trial that was "running"
        and is now "completed" never matches ``status="running"``. ``epsilon`` matches
        ``target_epsilon`` as in ``best``. ``latest_only=False`` returns every stored
        version (superseded ones included; ``compact`` discards those).
        """
        statuses = _as_list(status)
        for s in statuses or []:
            if s not in STATUSES:
                raise ResultsStoreError(f"unknown status {s!r}; choose from {', '.join(STATUSES)}")
        trial_ids = _as_list(trial_id)

        def run() -> pd.DataFrame:
            snap = self._snapshot(TRIALS, study)
            names = snap.schema.names
            if columns is not None:
                unknown = [c for c in columns if c not in names]
                if unknown:
                    raise ResultsStoreError(f"unknown column(s) {unknown}; available: {', '.join(names)}")
            flt = None if not trial_ids else pc.field("trial_id").isin(trial_ids)
            table = self._scan(snap, names, flt)
            self._require_study(snap, table)
            if latest_only:
                table = _latest(table, ["study", "trial_id"])
            table = table.filter(_trial_mask(table, statuses, epsilon))
            table = table.sort_by([("study", "ascending"), ("trial_id", "ascending"), (WRITTEN_AT, "ascending")])
            keep = list(columns) if columns is not None else names
            return table.select(keep).to_pandas()

        return self._retrying(run)

    def read_history(
        self,
        study: str | None = None,
        trial_id: str | Sequence[str] | None = None,
        *,
        latest_only: bool = True,
    ) -> pd.DataFrame:
        """Per-epoch rows, sorted by (study, trial_id, epoch, step).

        Rows re-logged for the same (study, trial_id, epoch, step) keep only the latest
        write (rows with neither epoch nor step are all kept).
        """
        trial_ids = _as_list(trial_id)

        def run() -> pd.DataFrame:
            snap = self._snapshot(HISTORY, study)
            flt = None if not trial_ids else pc.field("trial_id").isin(trial_ids)
            table = self._scan(snap, snap.schema.names, flt)
            self._require_study(snap, table)
            if latest_only:
                table = _latest_history(table)
            table = table.sort_by(
                [(k, "ascending") for k in ("study", "trial_id", "epoch", "step", "timestamp", WRITTEN_AT)]
            )
            return table.select(snap.schema.names).to_pandas()

        return self._retrying(run)

    def studies(self) -> list[str]:
        """Names of the studies that have a directory in the store (cheap: a listing)."""
        names = set(self._study_dirs(TRIALS)) | set(self._study_dirs(HISTORY))
        return sorted(names)

    def list_studies(self) -> pd.DataFrame:
        """One summary row per study with trials.

        Columns: study, n_trials, n_completed, n_stopped_early, n_failed, n_running,
        best_val_accuracy (max over completed/stopped_early trials), target_epsilon
        (the study's value, NaN if its trials use several), target_epsilons (all values,
        comma-separated), first_started_at, last_finished_at, last_written_at.
        """
        cols = [
            "study",
            "trial_id",
            "status",
            "best_val_accuracy",
            "target_epsilon",
            "started_at",
            "finished_at",
            WRITTEN_AT,
        ]

        def run() -> pd.DataFrame:
            snap = self._snapshot(TRIALS, None)
            table = _latest(self._scan(snap, cols), ["study", "trial_id"])
            return _summarize(table.select(cols).to_pandas())

        return self._retrying(run)

    def best(
        self,
        study: str | None = None,
        epsilon: float | None = None,
        metric: str = "best_val_accuracy",
        top: int | None = 5,
        mode: str = "max",
    ) -> pd.DataFrame:
        """The ``top`` trials by ``metric``, best first, with a leading ``rank`` column.

        Only completed and stopped_early trials are ranked, and only those with a value
        for the metric. ``epsilon=E`` keeps trials whose ``target_epsilon`` equals E
        (within ``1e-9 * max(1, |E|)``): privacy budgets are chosen from a grid, and a
        "<= E" filter would mix runs with different guarantees in one ranking. Ties are
        broken by study then trial_id (ascending) so the output is deterministic.
        ``metric`` may be any numeric trial column; ``val_accuracy`` means
        ``best_val_accuracy``. Use ``mode="min"`` for costs (epsilon, wall_time_s).
        """
        if mode not in ("max", "min"):
            raise ResultsStoreError(f"unknown mode {mode!r}; choose 'max' or 'min'")
        if top is not None and (not isinstance(top, (int, np.integer)) or top < 1):
            raise ResultsStoreError(f"top must be a positive integer or None, got {top!r}")
        column = METRIC_ALIASES.get(metric, metric)

        def run() -> pd.DataFrame:
            snap = self._snapshot(TRIALS, study)
            _check_metric(metric, column, snap.schema)
            keys = list(
                dict.fromkeys(["study", "trial_id", "status", "target_epsilon", column, "finished_at", WRITTEN_AT])
            )
            light = self._scan(snap, keys)
            self._require_study(snap, light)
            light = _latest(light, ["study", "trial_id"])
            light = light.filter(_trial_mask(light, list(RANKABLE_STATUSES), epsilon))
            score = light[column].cast(pa.float64())
            light = light.append_column("__score", score)
            light = light.filter(pc.and_(pc.is_valid(score), pc.invert(pc.is_nan(score))))
            order = "descending" if mode == "max" else "ascending"
            idx = pc.sort_indices(light, [("__score", order), ("study", "ascending"), ("trial_id", "ascending")])
            if top is not None:
                idx = idx[: int(top)]
            winners = light.take(idx)
            full = self._fetch(snap, winners)
            full.insert(0, "rank", np.arange(1, len(full) + 1, dtype=np.int64))
            return full

        return self._retrying(run)

    # ------------------------------------------------------------------ compaction

    def compact(self, study: str | None = None) -> list[CompactionResult]:
        """Merge each study's files (trials and history) into one file per table.

        Why: reads cost one footer per file, so a study of thousands of single-row
        files is slow to query; after compaction it is one file. How: the files listed
        now are read, superseded rows are dropped (what reads would drop anyway), the
        result is written as ``compacted-<uuid>.parquet``, and only then are exactly
        the merged files deleted. Files written meanwhile are untouched and still win
        if newer; skipped (foreign/corrupt) files are never merged nor deleted. A crash
        between the write and the deletes leaves duplicates, which reads deduplicate.
        Run it from one process at a time per study (e.g. when a tuning run ends).
        """
        if study is not None:
            targets = [study]
            if study not in self.studies():
                raise ResultsStoreError(f"unknown study {study!r}; known studies: {_listing(self.studies())}")
        else:
            targets = self.studies()
        results = []
        for name in targets:
            for table in (TRIALS, HISTORY):
                results.append(self._retrying(lambda t=table, s=name: self._compact_one(t, s)))
        return results

    def maybe_compact(self, study: str, max_files: int = 256) -> list[CompactionResult]:
        """Compact the study's tables that hold more than ``max_files`` files.

        Cheap when there is nothing to do (one directory listing per table), so a tuning
        driver can call it after every finished trial to keep ``best`` fast while the
        study runs. Call it from one process (the driver), not from every trial worker.
        """
        results = []
        for table in (TRIALS, HISTORY):
            n_files = len(self.list_files(table, study))
            if n_files > max_files:
                results.append(self._retrying(lambda t=table: self._compact_one(t, study)))
        return results

    def _compact_one(self, table_name: str, study: str) -> CompactionResult:
        directory = self._study_path(table_name, study)
        paths = self._list_dir(directory, recursive=True)
        if len(paths) <= 1:
            return CompactionResult(table_name, study, 0, 0, 0, None)
        canonical = TRIAL_COLUMNS if table_name == TRIALS else HISTORY_COLUMNS
        fragments = self._open(paths, canonical)
        if len(fragments) <= 1:
            return CompactionResult(table_name, study, 0, 0, 0, None)
        schema, _ = unify_schemas([f.physical_schema for _, f in fragments], canonical)
        snap = _Snapshot(table_name, study, tuple(fragments), schema)
        table, used = self._scan_with_paths(snap, schema.names)
        rows_read = table.num_rows
        if table_name == TRIALS:
            table = _latest(table, ["study", "trial_id"])
            table = table.sort_by([("study", "ascending"), ("trial_id", "ascending")])
        else:
            table = _latest_history(table)
            table = table.sort_by([(k, "ascending") for k in ("study", "trial_id", "epoch", "step")])
        table = table.drop_columns([_FILENAME])
        droppable = [c for c in table.column_names if c not in canonical and table[c].null_count == table.num_rows]
        table = table.drop_columns(droppable)
        table = table.set_column(
            table.schema.get_field_index("study"), "study", table["study"].combine_chunks().dictionary_encode()
        )
        new = self._write_file(table_name, study, table, f"compacted-{uuid.uuid4().hex}.parquet")
        for path in used:
            try:
                self.fs.delete_file(path)
            except FileNotFoundError:
                pass
        return CompactionResult(table_name, study, len(used), rows_read, table.num_rows, new)

    # ------------------------------------------------------------------ internals

    def _retrying(self, fn: Callable[[], _T]) -> _T:
        """Run a read, re-listing when a file vanished under it (a compact merged it).

        Compaction writes the merged file before deleting its inputs, so a fresh listing
        always holds every row; backing off lets a running compaction finish.
        """
        for attempt in range(_RETRIES):
            try:
                return fn()
            except _Vanished:
                time.sleep(min(0.5, 0.005 * 2**attempt))
        raise ResultsStoreError(
            f"files under {self.uri} kept disappearing during the read (concurrent compact?); retry"
        )

    def _skip(self, path: str, reason: str) -> None:
        with self._lock:
            if path in self._warned:
                return
            self._warned.add(path)
            self.skipped_files.append(SkippedFile(path, reason))
        warnings.warn(f"results store: skipping {path}: {reason}", SkippedFileWarning, stacklevel=2)

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _list_dir(self, directory: str, recursive: bool) -> list[str]:
        selector = pafs.FileSelector(directory, recursive=recursive, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except FileNotFoundError as exc:  # a (sub)directory appeared/vanished mid-listing
            raise _Vanished(directory) from exc
        out = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            if info.base_name.endswith(TEMP_SUFFIX):  # a write in flight, or one that was killed: never read
                self._note_temp(info)
                continue
            rel = info.path[len(directory) :].lstrip("/")
            if any(part.startswith((".", "_")) for part in rel.split("/")):
                continue  # _SUCCESS markers, hidden files of other tools, ...
            out.append(info.path)
        return sorted(out)

    def _note_temp(self, info: pafs.FileInfo) -> None:
        """Remember a temporary file old enough to be a leftover of a killed writer (the CLI says so once)."""
        mtime = info.mtime.timestamp() if info.mtime is not None else None
        if mtime is None or time.time() - mtime < LEFTOVER_TEMP_AGE_S:
            return
        with self._lock:
            if info.path not in self.leftover_temp_files:
                self.leftover_temp_files.append(info.path)

    def _study_dirs(self, table: str) -> list[str]:
        selector = pafs.FileSelector(self.table_path(table), recursive=False, allow_not_found=True)
        names = []
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.Directory and info.base_name.startswith("study="):
                names.append(unquote(info.base_name[len("study=") :]))
        return sorted(names)

    def _open(self, paths: Sequence[str], canonical: Mapping[str, pa.DataType]) -> list[tuple[str, ds.Fragment]]:
        """Fragments of the usable files (footers read in parallel, cached on the fragment).

        Unusable files (not Parquet, no key columns, a canonical column of a type it cannot be read
        as) are reported from the calling thread, so that warning filters (``warnings.catch_warnings``,
        ``pytest.warns``) see them.
        """

        def one(path: str) -> tuple[str, ds.Fragment | None, str | None]:
            try:
                fragment = self._format.make_fragment(path, filesystem=self.fs)
                schema = fragment.physical_schema
            except FileNotFoundError as exc:
                raise _Vanished(path) from exc
            except (pa.ArrowException, ValueError, OSError) as exc:
                if not self._exists(path):
                    raise _Vanished(path) from exc
                return path, None, f"not a readable Parquet file ({exc})"
            missing = [c for c in KEY_COLUMNS if c not in schema.names]
            if missing:
                return path, None, f"Parquet file without the {'/'.join(missing)} column(s): not written by this store"
            conflicts = canonical_conflicts(schema, canonical)
            if conflicts:
                return (
                    path,
                    None,
                    (
                        f"{'; '.join(conflicts)} as this store writes it, so it cannot be read with the other files; "
                        "fix the column's type in that file or move the file out of the store"
                    ),
                )
            return path, fragment, None

        if len(paths) > 8:
            with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
                opened = list(pool.map(one, paths))
        else:
            opened = [one(p) for p in paths]
        usable = []
        for path, fragment, reason in opened:
            if fragment is None:
                self._skip(path, reason or "unusable")
            else:
                usable.append((path, fragment))
        return usable

    def list_files(self, table: str = TRIALS, study: str | None = None) -> list[str]:
        """Data files of a table (all studies, or one study's directory): for diagnostics."""
        directory = self.table_path(table) if study is None else self._study_path(table, study)
        return self._retrying(lambda: self._list_dir(directory, recursive=True))

    def _snapshot(self, table: str, study: str | None) -> _Snapshot:
        base = self.table_path(table)
        if study is None:
            paths = self._list_dir(base, recursive=True)
        else:
            # the study's directory plus any stray files at the top level
            paths = self._list_dir(self._study_path(table, study), recursive=True)
            paths += self._list_dir(base, recursive=False)
        canonical = {TRIALS: TRIAL_COLUMNS, HISTORY: HISTORY_COLUMNS, LEDGER: LEDGER_COLUMNS}[table]
        fragments = self._open(paths, canonical)
        schema, dropped = unify_schemas([f.physical_schema for _, f in fragments], canonical)
        for name in dropped:
            self._skip(f"{base}#column={name}", f"column {name!r} has incompatible nested types across files; not read")
        return _Snapshot(table, study, tuple(fragments), schema)

    def _scan(self, snap: _Snapshot, columns: Sequence[str], flt: pc.Expression | None = None) -> pa.Table:
        return self._scan_with_paths(snap, columns, flt)[0]

    def _scan_with_paths(
        self, snap: _Snapshot, columns: Sequence[str], flt: pc.Expression | None = None
    ) -> tuple[pa.Table, list[str]]:
        """Rows of the snapshot's files cast to its schema, plus a ``__filename`` column.

        One multi-threaded scan normally; if that fails, file by file so that a single
        bad file is skipped (and reported) instead of failing the read.
        """
        if snap.study is not None:
            study_filter = pc.field("study") == snap.study
            flt = study_filter if flt is None else (flt & study_filter)
        cols = [c for c in columns if c != _FILENAME] + [_FILENAME]
        if not snap.fragments:
            empty = snap.schema.empty_table().select([c for c in cols if c != _FILENAME])
            return empty.append_column(_FILENAME, pa.array([], pa.string())), []

        def dataset(fragments: Sequence[ds.Fragment]) -> ds.Dataset:
            return ds.FileSystemDataset(list(fragments), schema=snap.schema, format=self._format, filesystem=self.fs)

        try:
            table = dataset([f for _, f in snap.fragments]).to_table(columns=cols, filter=flt)
            return table, [p for p, _ in snap.fragments]
        except (pa.ArrowException, ValueError, OSError):
            pass
        parts, used = [], []
        for path, fragment in snap.fragments:
            try:
                parts.append(dataset([fragment]).to_table(columns=cols, filter=flt))
                used.append(path)
            except FileNotFoundError as exc:
                raise _Vanished(path) from exc
            except (pa.ArrowException, ValueError, OSError) as exc:
                if not self._exists(path):
                    raise _Vanished(path) from exc
                self._skip(path, f"unreadable data ({exc})")
        if not parts:
            empty = snap.schema.empty_table().select([c for c in cols if c != _FILENAME])
            return empty.append_column(_FILENAME, pa.array([], pa.string())), []
        return pa.concat_tables(parts), used

    def _fetch(self, snap: _Snapshot, winners: pa.Table) -> pd.DataFrame:
        """Full rows of the ranked ``winners`` (read from their files only), in order."""
        if winners.num_rows == 0:
            return snap.schema.empty_table().to_pandas()
        files = set(winners[_FILENAME].to_pylist())
        subset = _Snapshot(snap.table, snap.study, tuple((p, f) for p, f in snap.fragments if p in files), snap.schema)
        ids = list(dict.fromkeys(winners["trial_id"].to_pylist()))
        full = _latest(self._scan(subset, snap.schema.names, pc.field("trial_id").isin(ids)), ["study", "trial_id"])
        position = {key: i for i, key in enumerate(zip(winners["study"].to_pylist(), winners["trial_id"].to_pylist()))}
        keys = zip(full["study"].to_pylist(), full["trial_id"].to_pylist())
        order = pa.array([position.get(k, len(position)) for k in keys], pa.int64())
        full = full.append_column("__order", order).filter(pc.field("__order") < len(position))
        full = full.sort_by("__order")
        return full.select(snap.schema.names).to_pandas()

    def _require_study(self, snap: _Snapshot, table: pa.Table) -> None:
        """Unknown study -> ResultsStoreError listing the known ones (a typo, usually)."""
        if snap.study is None or table.num_rows:
            return
        known = self.studies()
        if snap.study not in known:
            raise ResultsStoreError(f"unknown study {snap.study!r}; known studies: {_listing(known)}")


# ---------------------------------------------------------------------- helpers


def _as_list(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _listing(names: Sequence[str], limit: int = 30) -> str:
    if not names:
        return "(none)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _group_by_study(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row["study"]), []).append(row)
    return groups


def _file_name(rows: list[dict[str, Any]]) -> str:
    ids = {str(r["trial_id"]) for r in rows}
    stem = _quote(ids.pop())[:80] if len(ids) == 1 else "batch"
    return f"{stem}-{uuid.uuid4().hex}.parquet"


def _check_metric(metric: str, column: str, schema: pa.Schema) -> None:
    numeric = [
        f.name
        for f in schema
        if (pa.types.is_integer(f.type) or pa.types.is_floating(f.type)) and f.name not in KEY_COLUMNS
    ]
    if column in numeric:
        return
    choices = [m for m in STANDARD_METRICS if m in numeric]
    choices += sorted(n for n in numeric if n not in choices and not n.startswith("config."))
    choices += [f"{alias} (= {target})" for alias, target in METRIC_ALIASES.items()]
    choices.append("or any numeric config.* column")
    what = "is not numeric" if column in schema.names else "is unknown"
    raise ResultsStoreError(f"metric {metric!r} {what}; choose one of: {', '.join(choices)}")


def _trial_mask(table: pa.Table, statuses: Sequence[str] | None, epsilon: float | None) -> pa.Array:
    mask = pa.array(np.ones(table.num_rows, dtype=bool))
    if statuses is not None:
        mask = pc.and_(mask, pc.fill_null(pc.is_in(table["status"], pa.array(list(statuses), pa.string())), False))
    if epsilon is not None:
        tol = EPSILON_TOL * max(1.0, abs(float(epsilon)))
        target = table["target_epsilon"].cast(pa.float64())
        close = pc.less_equal(pc.abs(pc.subtract(target, float(epsilon))), tol)
        mask = pc.and_(mask, pc.fill_null(close, False))
    return mask


def _same_as_next(column: pa.ChunkedArray | pa.Array, nulls_equal: bool) -> np.ndarray:
    """For a sorted column, whether each row (but the last) equals the next one."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    n = len(arr)
    a, b = arr.slice(0, n - 1), arr.slice(1)
    eq = pc.equal(a, b)
    if nulls_equal:
        both_null = pc.and_(pc.is_null(a), pc.is_null(b))
        eq = pc.or_(pc.fill_null(eq, False), both_null)
    return np.asarray(pc.fill_null(eq, False).to_numpy(zero_copy_only=False), dtype=bool)


def _latest(table: pa.Table, keys: Sequence[str], nulls_equal: bool = False) -> pa.Table:
    """Keep the latest row per key: by written_at, then finished_at, then file name.

    Rows with a null key never match another row unless ``nulls_equal``.
    """
    if table.num_rows <= 1:
        return table
    # Order within a key: missing timestamps count as oldest. (Timestamps are mapped to
    # int64 with nulls -> min, because per-key null placement needs pyarrow >= 25.)
    order = [(k, "ascending") for k in keys]
    sortable = table
    for col in (WRITTEN_AT, "finished_at"):
        if col in table.column_names:
            name = f"__sort_{col}"
            ticks = pc.fill_null(table[col].cast(pa.int64()), np.iinfo(np.int64).min)
            sortable = sortable.append_column(name, ticks)
            order.append((name, "ascending"))
    if _FILENAME in table.column_names:
        order.append((_FILENAME, "ascending"))
    table = table.take(pc.sort_indices(sortable, sort_keys=order))
    same = np.ones(table.num_rows - 1, dtype=bool)
    for key in keys:
        same &= _same_as_next(table[key], nulls_equal)
    last = np.ones(table.num_rows, dtype=bool)
    last[:-1] = ~same
    return table.filter(pa.array(last))


def _latest_history(table: pa.Table) -> pa.Table:
    """History dedup on (study, trial_id, epoch, step); rows with neither are all kept."""
    if table.num_rows <= 1:
        return table
    anonymous = pc.and_(pc.is_null(table["epoch"]), pc.is_null(table["step"]))
    kept = table.filter(anonymous)
    located = _latest(table.filter(pc.invert(anonymous)), ["study", "trial_id", "epoch", "step"], nulls_equal=True)
    return pa.concat_tables([located, kept]) if kept.num_rows else located


def _summarize(df: pd.DataFrame) -> pd.DataFrame:
    columns = [
        "study", "n_trials", "n_completed", "n_stopped_early", "n_failed", "n_running",
        "best_val_accuracy", "target_epsilon", "target_epsilons",
        "first_started_at", "last_finished_at", "last_written_at",
    ]  # fmt: skip
    rows = []
    for study, group in df.groupby("study", sort=True):
        status = group["status"]
        rankable = group[status.isin(RANKABLE_STATUSES)]["best_val_accuracy"]
        targets = sorted({float(t) for t in group["target_epsilon"] if not pd.isna(t)})
        rows.append(
            {
                "study": study,
                "n_trials": len(group),
                "n_completed": int((status == "completed").sum()),
                "n_stopped_early": int((status == "stopped_early").sum()),
                "n_failed": int((status == "failed").sum()),
                "n_running": int((status == "running").sum()),
                "best_val_accuracy": float(rankable.max()) if rankable.notna().any() else math.nan,
                "target_epsilon": targets[0] if len(targets) == 1 else math.nan,
                "target_epsilons": ",".join(f"{t:g}" for t in targets),
                "first_started_at": group["started_at"].min(),
                "last_finished_at": group["finished_at"].max(),
                "last_written_at": group[WRITTEN_AT].max(),
            }
        )
    out = pd.DataFrame(rows, columns=columns)
    for col in ("first_started_at", "last_finished_at", "last_written_at"):
        out[col] = pd.to_datetime(out[col], utc=True)
    return out
