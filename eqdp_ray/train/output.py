"""result.json: the record of one run, written atomically so a crash never leaves half a file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from eqdp_ray.config.paths import OutputError, check_output_dir  # their home is config; re-exported for callers

__all__ = ["OutputError", "check_output_dir", "write_result"]


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
