"""benchmarks/scaling.py at a tiny size: --oversubscribe reaches a real local Ray, and without it the script refuses."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--steps",
    "2",
    "--set",
    "model.options={group: dihedral, order: 4, layout: [2, 4, 4], num_groups: 2}",
    "--set",
    "training.batch_size=64",
]


def scaling(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray, as the script starts it
    return subprocess.run(
        [sys.executable, "benchmarks/scaling.py", *TINY, *args], cwd=REPO, env=env, capture_output=True, text=True
    )


def test_more_worker_cpus_than_cores_are_refused_before_anything_runs():
    workers = (os.cpu_count() or 1) + 1
    proc = scaling("--workers", str(workers))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith("eqdp-ray: error:") and "Traceback" not in proc.stderr
    assert f"need {workers} CPUs" in proc.stderr and "--oversubscribe" in proc.stderr
    assert "samples/s" not in proc.stdout  # not one run started


@pytest.mark.ray
def test_oversubscribe_runs_workers_that_need_more_cpus_than_this_machine_has():
    cores = os.cpu_count() or 1  # 2 workers x all the cores: twice what the machine has
    proc = scaling("--workers", "2", "--cpus-per-worker", str(cores), "--oversubscribe")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 Ray worker(s)" in proc.stdout and "2 workers / 1 worker = " in proc.stdout, proc.stdout
