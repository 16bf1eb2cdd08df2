"""Set-up shared by the tune tests that run real studies: a tiny digits study, a local Ray, a driver to interrupt."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: Seconds per trial on one CPU: ResNet-9 at 1/8 width on 300 digits.
TINY_FIXED = {
    "model.name": "resnet9",
    "model.options.width": 0.125,
    "model.options.num_groups": 2,
    "training.eval_every": 2,
    "training.crop_padding": 0,
    "training.ema_decay": 0.9,
    "training.physical_batch_size": 128,
    "privacy.secret_seed": 7,
}

TINY_STUDY = {
    "privacy": {"target_epsilon": 4.0, "delta": 1e-5},
    "data": {"name": "digits", "train_subset": 300, "test_subset": 100},
    "fixed": TINY_FIXED,
    "search": {
        "training.steps": {"type": "categorical", "choices": [4, 12]},
        "training.lr": {"type": "float", "low": 0.5, "high": 2.0, "log": True},
        "training.batch_size": {"type": "categorical", "choices": [32, 64]},
    },
    "resources": {"workers": 1, "cpus_per_worker": 1},
    # A trial of 12 steps validates 6 times: ASHA stops it at its 3rd report (max_t). One of 4
    # steps validates twice and completes. grace_period = max_t: no rung cuts before max_t, so
    # which trial stops does not depend on the accuracies.
    "scheduler": {"type": "asha", "grace_period": 3, "reduction_factor": 2, "max_t": 3},
    "num_samples": 3,
    "max_concurrent": 2,
}


def tiny_study(study: str, **changes: Any) -> dict[str, Any]:
    """TINY_STUDY named `study`, its top-level blocks replaced by `changes`; a copy that a test may edit."""
    return copy.deepcopy({"study": study, **TINY_STUDY, **changes})


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def write_study(directory: Path, space: dict[str, Any]) -> tuple[Path, Path, Any]:
    """The space as `space.yaml` in `directory`, and the store beside it: (space file, store directory, store)."""
    import yaml

    from eqdp_ray.results import ResultsStore

    space_file = directory / "space.yaml"
    space_file.write_text(yaml.safe_dump(space))
    store_dir = directory / "store"
    return space_file, store_dir, ResultsStore(str(store_dir))


DRIVER = """
import sys
from eqdp_ray.tune import run_search
run_search(sys.argv[1], store=sys.argv[2], checkpoint_every_s=0)
"""


def interrupt_driver(
    space_file: Path,
    store_dir: Path,
    ready: Callable[[], Any],
    *,
    sig: signal.Signals,
    settle_s: float,
    deadline_s: float,
) -> Any:
    """Run a study's driver in its own process (a local Ray of its own); when `ready()` returns
    something other than None, wait `settle_s` (the running trial checkpoints), send `sig` and
    reap the driver. Returns what `ready` returned; fails with the driver's log (first.log beside
    the space file) if it never did."""
    log = space_file.parent / "first.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(space_file), str(store_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline, seen = time.time() + deadline_s, None
            while time.time() < deadline and proc.poll() is None:
                seen = ready()
                if seen is not None:
                    break
                time.sleep(0.5)
            assert seen is not None, log.read_text()[-3000:]
            time.sleep(settle_s)
            proc.send_signal(sig)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    return seen
