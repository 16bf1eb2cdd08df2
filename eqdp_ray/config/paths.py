"""Local output paths named on the command line: checked before any work, written whole or not at all.

They live in `config`, beside the locations of `storage`, because several layers write what the user
names (train's and audit's ``--output`` directories, ``best --emit-config``, ``report --out``) and every
one of them owes the user the same thing: one clear error before anything runs, never half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from eqdp_ray.config.errors import ConfigError


class OutputError(ConfigError):
    """An output path that cannot take what would be written there: said before the work, so none is lost."""


def _check_writable_dir(target: Path, label: str) -> None:
    """`target` is, or can be made, a directory we can write into; `label` starts each message."""
    existing = next((p for p in [target, *target.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise OutputError(f"{label}: {existing} is a file, not a directory; pass another path")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{label}: {existing} is not writable; pass a writable directory")
    if existing is not None:  # os.access says yes to root, and on some network file systems: try it for real
        probe = existing / f".eqdp-ray-write-probe-{os.getpid()}"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise OutputError(
                f"{label}: {existing} cannot be written ({exc.strerror}); pass a writable directory"
            ) from None


def check_output_dir(output_dir: str | os.PathLike[str], flag: str = "--output") -> None:
    """Fail now, not after the work, when `output_dir` cannot become a directory we write into."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"{flag} {output_dir} is an existing file, not a directory; pass a directory")
    _check_writable_dir(output_dir, f"{flag} {output_dir}")


def check_output_file(path: str | os.PathLike[str], flag: str, overwrite: bool = False) -> None:
    """Fail now when `path` cannot take a new file: a directory, an existing file (unless `overwrite`),
    or a place that cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a directory; pass a file path, e.g. {path / 'best.yaml'}")
    if path.exists() and not overwrite:
        raise OutputError(f"{flag} {path} already exists; pass another path, or add --force to replace it")
    _check_writable_dir(path.parent, f"{flag} {path}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` through a hidden temporary file in the same directory and one rename, so a
    reader, or a kill at any moment, sees the old file or the new one, never part of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the file private, unlike a plain write
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
