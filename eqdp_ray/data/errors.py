"""The one exception type the data layer raises for user-fixable problems."""

from __future__ import annotations

from eqdp_ray.config.errors import UserError

__all__ = ["DatasetError"]


class DatasetError(UserError, ValueError):
    """A data set cannot be loaded as asked; the message says what to change.

    Subclasses ``ValueError`` so that callers validating configuration can catch both
    bad arguments and missing files with one ``except``.
    """
