"""Attaching to a Ray cluster, or starting a local one, with errors a user can act on."""

from __future__ import annotations

import logging
import math
import os
import socket
import uuid
from urllib.parse import urlparse

from eqdp_ray.config import ConfigError
from eqdp_ray.config.storage import open_location


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


def local_cpus(workers: int, cpus_per_worker: float, *, oversubscribe: bool = False) -> int:
    """CPUs a local Ray advertises: this machine's cores, or as many as the workers ask when
    oversubscribing was chosen. Never more by default: then the resource check could never fail."""
    cores = os.cpu_count() or 1
    return max(cores, math.ceil(workers * cpus_per_worker)) if oversubscribe else cores


def check_local_cpus(workers: int, cpus_per_worker: float, *, fix: str) -> None:
    """Fail before starting a local Ray whose cores cannot hold the workers at once."""
    cores, need = os.cpu_count() or 1, workers * cpus_per_worker
    if need > cores:
        raise ClusterError(
            f"{workers} workers x {cpus_per_worker:g} CPU need {need:g} CPUs but this machine has {cores}; "
            f"{fix}, or pass --oversubscribe to run them anyway (slower, same result)"
        )


def check_resources(workers: int, cpus_per_worker: float, gpus_per_worker: float, *, fix: str) -> None:
    """Fail when the connected cluster cannot hold `workers` workers at once; `fix` says what to change."""
    import ray

    available = ray.cluster_resources()
    cpus, gpus = available.get("CPU", 0.0), available.get("GPU", 0.0)
    need_cpus, need_gpus = workers * cpus_per_worker, workers * gpus_per_worker
    if cpus < need_cpus or gpus < need_gpus:
        raise ClusterError(
            f"{workers} workers x ({cpus_per_worker:g} CPU, {gpus_per_worker:g} GPU) need {need_cpus:g} CPUs and "
            f"{need_gpus:g} GPUs but the cluster has {cpus:g} CPUs and {gpus:g} GPUs; {fix}"
        )


def will_start_local_ray(address: str | None) -> bool:
    """True when `connect_ray(address)` would start a local Ray (no address, no RAY_ADDRESS, none running)."""
    import ray

    return not ray.is_initialized() and not (address or os.environ.get("RAY_ADDRESS"))


def connect_ray(
    address: str | None, *, num_cpus: int, include_dashboard: bool = True, log_to_driver: bool = True
) -> bool:
    """Attach to `address` (or RAY_ADDRESS), else start a local Ray with `num_cpus` (see `local_cpus`);
    True if this call started Ray. `log_to_driver=False` keeps the workers' output in their log files
    instead of echoing it on the driver (a search whose trial logs must not leave it)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        probe_address(address)
        try:
            ray.init(address=address, log_to_driver=log_to_driver)
        except Exception as exc:  # noqa: BLE001 - every failure means the same to the user
            raise ClusterError(
                f"cannot attach to the Ray cluster at '{address}' ({type(exc).__name__}: {exc}); "
                "check the address (e.g. 'auto' on a cluster node) and the auth token"
            ) from None
        return True
    ray.init(num_cpus=num_cpus, include_dashboard=include_dashboard, log_to_driver=log_to_driver)
    return True


def check_writable(uri: str, *, what: str, flag: str) -> None:
    """Write and remove a probe file, so unwritable storage fails now, not after the first epoch.

    Local directories that the probe had to create are removed again (only while empty), so a
    run that fails later, e.g. on an unreachable cluster, leaves the disk as it was.
    """
    try:
        fs, path = open_location(uri)
        created = _missing_local_dirs(path) if fs.type_name == "local" else []
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
    for directory in created:  # deepest first; rmdir refuses a directory someone else has filled
        try:
            os.rmdir(directory)
        except OSError:
            break


def _missing_local_dirs(path: str) -> list[str]:
    """`path` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while path and not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def show_progress_in_worker_log() -> None:
    """Show the library's progress lines in the logs of processes that Ray starts (Train workers, Tune
    trials), once each, as a direct run prints them.

    The package logs through its own handler and stops there: Ray gives those processes a root
    handler of its own, and a record that also went on to it was printed twice."""
    package = logging.getLogger("eqdp_ray")
    if not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
        package.propagate = False
