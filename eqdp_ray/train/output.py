"""result.json: the record of one run, written atomically so a crash never leaves half a file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from eqdp_ray.config import ConfigError


class OutputError(ConfigError):
    """The output directory cannot take the result: checked before training, so no run is lost."""


def check_output_dir(output_dir: str | Path) -> None:
    """Fail now, not after training, when `output_dir` cannot hold result.json."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"--output {output_dir} is an existing file, not a directory; pass a directory")
    existing = next((p for p in [output_dir, *output_dir.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise OutputError(f"--output {output_dir}: {existing} is a file, not a directory; pass another path")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"--output {output_dir}: {existing} is not writable; pass a writable directory")
    if existing is not None:  # os.access says yes to root, and on some network file systems: try it for real
        probe = existing / f".eqdp-ray-write-probe-{os.getpid()}"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise OutputError(
                f"--output {output_dir}: {existing} cannot be written ({exc.strerror}); pass a writable directory"
            ) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_result(result: dict[str, Any], output_dir: str | Path) -> Path:
    """Write result.json atomically (a temporary file, then a rename)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "result.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(result), indent=2, sort_keys=False))
    os.replace(tmp, path)
    return path
