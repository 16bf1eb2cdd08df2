"""Attaching to a Ray cluster, or starting a local one, with errors a user can act on."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

from eqdp_ray.config import ConfigError


class ClusterError(ConfigError):
    """The cluster cannot run what was asked: too few resources, unreachable, unwritable storage."""


def probe_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a `host:port` nobody listens on; ray.init would retry for minutes."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        raise ClusterError(f"cannot parse the Ray address '{address}': use host:port, ray://host:port or 'auto'")
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at '{address}' ({exc}); check the address and that the cluster is up "
            "('ray status' on the head node), or omit --address to start a local Ray"
        ) from None


def connect_ray(address: str | None, *, num_cpus: int, include_dashboard: bool = True) -> bool:
    """Attach to `address` (or RAY_ADDRESS), else start a local Ray; True if this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        probe_address(address)
        try:
            ray.init(address=address)
        except Exception as exc:  # noqa: BLE001 - every failure means the same to the user
            raise ClusterError(
                f"cannot attach to the Ray cluster at '{address}' ({type(exc).__name__}: {exc}); "
                "check the address (e.g. 'auto' on a cluster node) and the auth token"
            ) from None
        return True
    ray.init(num_cpus=num_cpus, include_dashboard=include_dashboard)
    return True


def check_writable(uri: str, *, what: str, flag: str) -> None:
    """Write and remove a probe file, so unwritable storage fails now, not after the first epoch."""
    import pyarrow.fs as pafs

    try:
        if "://" in uri:
            fs, path = pafs.FileSystem.from_uri(uri)
        else:
            fs, path = pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
        fs.create_dir(path, recursive=True)
        probe = f"{path}/.eqdp-write-probe-{uuid.uuid4().hex}"
        with fs.open_output_stream(probe) as out:
            out.write(b"ok")
        fs.delete_file(probe)
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        raise ClusterError(
            f"{what} '{uri}' is not writable ({type(exc).__name__}: {exc}); pass {flag} with a "
            "writable local path or bucket URI, and credentials for it"
        ) from None
