"""Exceptions and warnings of the results store.

Kept in their own module so that callers (the CLI, the Tune integration) can catch them
without importing pyarrow-heavy code paths.
"""

from __future__ import annotations

from typing import NamedTuple

from eqdp_ray.config.errors import UserError


class ResultsStoreError(UserError, ValueError):
    """A request the store cannot satisfy: unknown study/metric/column, bad row.

    A ``ValueError`` subclass so that generic argument-error handling in the CLI also
    catches it; the message always lists the valid choices.
    """


class SkippedFileWarning(UserWarning):
    """A file under the store could not be used (not Parquet, or not a results file).

    Such files are reported and ignored, never modified or deleted: they may belong to
    someone else, or be evidence of a problem worth keeping.
    """


class SkippedFile(NamedTuple):
    """A file that reading ignored, and why (see ``ResultsStore.skipped_files``)."""

    path: str
    reason: str
