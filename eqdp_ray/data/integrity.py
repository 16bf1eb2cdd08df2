"""Is a local copy of a data set the official one? Record counts per file, and checksums where
the official files have published ones.

A file cut to a whole number of records parses cleanly, so parsing alone would train on a
fraction of the data without a word. The rule: a copy whose files all hold the official
record counts is the official data set (then published checksums must match too); one where
some files do and others do not is a damaged copy and an error; one where no file does is a
deliberately small copy (test data, a subset someone wrote in the official layout), loaded
with a warning so that nobody mistakes its results for the official benchmark.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from .download import md5sum
from .errors import DatasetError

__all__ = ["check_official_copy"]

log = logging.getLogger(__name__)


def check_official_copy(
    dataset: str,
    records: Mapping[Path, int],
    official_records: Mapping[str, int],
    official_md5: Mapping[str, str] | None = None,
) -> bool:
    """Check a copy's files (path -> records read) against the official counts (file name -> records).

    Returns True for an official copy; raises DatasetError for a damaged one (some files with
    the official count, others without, or an official count with the wrong checksum); warns
    and returns False for a copy in which no file has the official count.
    """
    official = {path: official_records[path.name] for path in records}
    short = {path: n for path, n in records.items() if n != official[path]}
    if short and len(short) < len(records):
        path, n = next(iter(short.items()))
        intact = ", ".join(sorted(p.name for p in records if p not in short))
        raise DatasetError(
            f"{path} holds {n:,} records, the official {dataset} file {official[path]:,} (as {intact} here do): "
            "a truncated or damaged copy; delete it and download again (data.download=true)"
        )
    if short:
        total = sum(records.values())
        log.warning(
            "%s in %s is not the official data set: %s records where the official files hold %s; "
            "loading it as given (results are not comparable with the benchmark)",
            dataset,
            next(iter(records)).parent,
            f"{total:,}",
            f"{sum(official.values()):,}",
        )
        return False
    for path in records:
        expected = (official_md5 or {}).get(path.name)
        if expected is not None and (got := md5sum(path)) != expected:
            raise DatasetError(
                f"{path} has the official record count but not the official content (md5 {got}, expected "
                f"{expected}); delete it and download again (data.download=true)"
            )
    return True
