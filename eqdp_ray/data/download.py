"""Fetching and unpacking official archives: checksummed, atomic, traversal-safe.

A half-written or tampered file must never be mistaken for data, so downloads go to a
``.part`` file that is renamed only after its MD5 matches, and archives are unpacked into a
scratch folder whose members were checked to stay inside it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .errors import DatasetError

__all__ = ["md5sum", "download_file", "extract_tar"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
TIMEOUT_S = 60.0


def md5sum(path: str | Path) -> str:
    """Hex MD5 of a file, read in chunks so large archives need little memory."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def download_file(url: str, dest: str | Path, md5: str | None = None) -> Path:
    """Download ``url`` to ``dest`` unless a copy with the right MD5 is already there.

    The bytes go to ``dest + '.part'``, are hashed while written, and the part file is renamed
    onto ``dest`` only if the hash matches; on any failure it is deleted, so ``dest`` either
    does not exist or is complete. Raises :class:`DatasetError` on network errors, an
    unwritable folder or a checksum mismatch.
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        return dest
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(
            f"cannot create {dest.parent} to download into ({e}); point data.root at a writable folder"
        ) from e
    log.info("downloading %s -> %s", url, dest)
    h = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp, open(part, "wb") as out:
            for block in iter(lambda: resp.read(_CHUNK), b""):
                h.update(block)
                out.write(block)
    except (urllib.error.URLError, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise DatasetError(
            f"could not download {url} to {dest}: {reason}. Check the network, or download the "
            f"file by hand into {dest.parent} and load again without download"
        ) from e
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    got = h.hexdigest()
    if md5 is not None and got != md5:
        part.unlink(missing_ok=True)
        raise DatasetError(
            f"checksum mismatch for {url}: expected md5 {md5}, got {got}; the download is "
            "corrupt or the file changed upstream. Nothing was kept; try again or fetch it by hand"
        )
    os.replace(part, dest)
    return dest


def _check_member(member: tarfile.TarInfo, dest: Path) -> None:
    name = member.name
    target = (dest / name).resolve()
    if (
        os.path.isabs(name)
        or name.startswith(("/", "\\"))
        or ".." in Path(name).parts
        or not target.is_relative_to(dest)
    ):
        raise DatasetError(f"refusing to extract {name!r}: it would land outside {dest}")
    if not (member.isfile() or member.isdir()):
        raise DatasetError(
            f"refusing to extract {name!r}: only regular files and folders are expected in a data "
            "archive (links and devices are not)"
        )


def extract_tar(archive: str | Path, dest: str | Path) -> list[Path]:
    """Unpack a (gzipped) tar archive into ``dest``; return the top-level paths it created.

    Every member is checked first (no absolute paths, no ``..``, no links or devices), then
    the archive is unpacked into a scratch folder inside ``dest`` and its top-level entries are
    moved into place. Existing files are never overwritten: a folder that already exists is
    only completed with the files it lacks.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest_resolved = dest.resolve()
    scratch = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for m in members:
                    _check_member(m, dest_resolved)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(scratch, members=members, filter="data")
                else:  # pragma: no cover - Python without PEP 706 backport
                    tar.extractall(scratch, members=members)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DatasetError(f"cannot unpack {archive}: {e}; delete it and download again") from e
        created = []
        for entry in sorted(scratch.iterdir()):
            target = dest / entry.name
            if not target.exists():
                os.replace(entry, target)
            elif target.is_dir() and entry.is_dir():
                for sub in sorted(entry.rglob("*")):  # parents sort before children
                    t = target / sub.relative_to(entry)
                    if sub.is_dir():
                        t.mkdir(parents=True, exist_ok=True)
                    elif not t.exists():
                        os.replace(sub, t)
            created.append(target)
        return created
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
