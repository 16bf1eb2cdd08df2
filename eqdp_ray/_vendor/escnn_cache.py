"""Where the bundled escnn keeps its joblib cache: a per-user directory, never the installed package.

escnn caches the restricted irreps it computes (seconds per group) in a joblib store beside its
own sources. An installed package may be read-only and is shared by every user of the
environment, so the bundled copy asks here instead. The directory name carries escnn's version and
the patch level of the copy: entries written by an unpatched escnn (whose null spaces came from an
unseeded randomized SVD) are never read back.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_ENV = "EQDP_RAY_ESCNN_CACHE"
CACHE_NAME = "escnn-1.0.11-seeded-svd"


def escnn_cache_path() -> str | None:
    """``$EQDP_RAY_ESCNN_CACHE`` (empty: no cache), else ``$XDG_CACHE_HOME/eqdp-ray/<name>`` with
    ``~/.cache`` as the default; None (escnn recomputes, nothing is written) where it cannot be written."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit is not None:
        if not explicit:
            return None
        path = Path(explicit).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base).expanduser() / "eqdp-ray" / CACHE_NAME
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        logger.info("escnn cache off: %s cannot be created (%s)", path, error)
        return None
    if not os.access(path, os.W_OK | os.X_OK):
        logger.info("escnn cache off: %s is not writable", path)
        return None
    return str(path)
