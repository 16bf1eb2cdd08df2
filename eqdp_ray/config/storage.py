"""Where results and checkpoints live: the default results store, and one way to open a location.

A location is a local path (``~`` allowed) or a URI pyarrow understands (``file://``, ``s3://``,
``gs://``). It lives in `config` because every layer that writes (train's checkpoints, the
results store, tune's experiments) takes such a location from the user; pyarrow is imported
only when a location is opened, so the CLI can show the default without it.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from eqdp_ray.config.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

DEFAULT_STORE_URI = "./eqdp-results"

_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_uri(location: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...``; False for a local path."""
    return bool(_URI_RE.match(os.fspath(location)))


def canonical_location(location: str | os.PathLike[str]) -> str:
    """A URI unchanged, a local path made absolute: the form recorded and compared across runs."""
    location = os.fspath(location)
    return location if is_uri(location) else os.path.abspath(os.path.expanduser(location))


def open_location(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `location` and the path inside it (pyarrow's own URI resolution)."""
    import pyarrow.fs as pafs

    location = os.fspath(location)
    if is_uri(location):
        try:
            return pafs.FileSystem.from_uri(location)
        except ValueError as exc:  # pyarrow's ArrowInvalid: a scheme it does not know
            scheme = location.split("://", 1)[0]
            raise ConfigError(
                f"cannot open {location}: {exc}. Unknown storage scheme '{scheme}'? Use a local path, "
                "s3://, gs:// or another scheme pyarrow knows"
            ) from None
    return pafs.LocalFileSystem(), canonical_location(location)
