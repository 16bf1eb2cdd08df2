"""Is a local copy of a data set the official one? Record counts per file, and checksums where
the official files have published ones.

In a layout of fixed-size records without a header (CIFAR's binary batches), a file cut to a
whole number of records parses cleanly, so parsing alone would train on a fraction of the data
without a word. Where the format shows a cut itself (an IDX header that gives the record count,
gzip's end-of-stream check, a pickle's STOP opcode) the reader refuses it, and a consistent file
with fewer records was written that way on purpose.

The rule: a copy whose files all hold the official record counts is the official data set (then
published checksums must match too). In a layout whose cut files parse, a file with fewer
records beside files with at least the official count is a truncated copy and an error. Any
other copy (a file with more records than the official one, such as the official data plus one
example: a neighbouring data set; fewer records in a layout that shows cuts itself; every file
smaller, as in a test copy written in the official layout) is not the official data set and
loads with a warning, so that nobody mistakes its results for the official benchmark.
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
    *,
    cuts_parse: bool,
) -> bool:
    """Check a copy's files (path -> records read) against the official counts (file name -> records).

    ``records`` holds each record in one file only (so its sum is the copy's size); ``cuts_parse``
    says whether a file of this layout cut to whole records still parses. Returns True for an
    official copy; raises DatasetError for a truncated one (see the module docstring) or for an
    official count with the wrong checksum; warns and returns False for any other copy.
    """
    official = {path: official_records[path.name] for path in records}
    short = {path: n for path, n in records.items() if n < official[path]}
    if cuts_parse and short and len(short) < len(records):
        path, n = next(iter(short.items()))
        intact = ", ".join(sorted(p.name for p in records if p not in short))
        raise DatasetError(
            f"{path} holds {n:,} records, the official {dataset} file {official[path]:,} (as {intact} here do): "
            "a truncated or damaged copy (in this layout a file cut to whole records still parses); delete it "
            "and download again (data.download=true). To train on a copy with records removed on purpose, "
            "remove them in a layout that shows a cut (CIFAR's python layout)"
        )
    if any(n != official[path] for path, n in records.items()):
        log.warning(
            "%s in %s is not the official data set: %s records where the official files hold %s; "
            "loading it as given (results are not comparable with the benchmark)",
            dataset,
            next(iter(records)).parent,
            f"{sum(records.values()):,}",
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
