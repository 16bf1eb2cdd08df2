"""Shared row builders for the results-store tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def trial(study: str = "s", trial_id: str = "t0", status: str = "completed", **overrides: Any) -> dict[str, Any]:
    """A complete, valid trial row; keyword arguments replace or add keys."""
    row: dict[str, Any] = {
        "study": study,
        "trial_id": trial_id,
        "status": status,
        "config": {"lr": 0.01, "batch_size": 128, "model": {"group": "C8", "width": 16, "equivariant": True}},
        "sigma": 1.1,
        "sample_rate": 0.004,
        "steps": 1500,
        "epsilon": 7.9,
        "target_epsilon": 8.0,
        "delta": 1e-5,
        "accountant": "prv",
        "best_val_accuracy": 0.5,
        "final_val_accuracy": 0.48,
        "test_accuracy": 0.47,
        "num_params": 12345,
        "wall_time_s": 61.5,
        "device_seconds": 55.0,
        "started_at": T0,
        "finished_at": T0 + dt.timedelta(minutes=5),
    }
    row.update(overrides)
    return row
