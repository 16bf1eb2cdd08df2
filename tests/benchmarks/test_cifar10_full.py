"""benchmarks/cifar10_full.py for real at its smallest: one step of the paper's recipe on a tiny CIFAR-10.

The data is written here in the official binary layout (made-up pixels, 40 images a file), so the
test needs no ../shared. The run is a real one: the recipe's model, DP-SGD with the sigma of the
full 2,160-step schedule, evaluation and the JSON the script writes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from eqdp_ray.privacy import epsilon_spent, plan_privacy
from tests.data.formats import write_cifar10_bin

from .conftest import BENCHMARKS_DIR, _load

SCRIPT = BENCHMARKS_DIR / "cifar10_full.py"
PER_FILE = 40


@pytest.fixture(scope="module")
def cifar_bench():
    return _load("cifar10_full", BENCHMARKS_DIR, prefix="benchmarks")


def test_one_step_of_the_recipe_spends_what_the_full_schedules_sigma_gives(tmp_path):
    write_cifar10_bin(tmp_path / "data" / "cifar-10-batches-bin", PER_FILE)
    out = tmp_path / "out"
    argv = ["--eps", "8", "--device", "cpu", "--max-steps", "1", "--data-root", str(tmp_path / "data")]
    argv += ["--val-size", "40", "--batch-size", "16", "--physical-batch-size", "16", "--out", str(out)]
    paths = [str(BENCHMARKS_DIR.parent), os.environ.get("PYTHONPATH", "")]  # this checkout's eqdp_ray
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    run = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]

    assert sorted(p.name for p in out.iterdir()) == ["eps8_steps1.json"]
    result = json.loads((out / "eps8_steps1.json").read_text())
    assert (result["steps"], result["schedule_steps"], result["target_epsilon"]) == (1, 2160, 8.0)
    assert result["train_size"] + result["val_size"] == 5 * PER_FILE and result["test_size"] == PER_FILE
    assert result["expected_batch_size"] == 16 and result["augmult"] == 4 and result["group"] == "D4->D2"
    assert "NOT the official CIFAR-10: 240 images" in result["data"] and "CPU" in result["machine"]
    assert result["config"]["privacy"]["secret_seed"] is None  # no noise seed leaves the run
    assert all(0 <= result[k] <= 1 for k in ("test_accuracy", "val_accuracy"))
    assert math.isfinite(result["samples_per_s"]) and result["samples_per_s"] > 0

    # fixed-length mode: sigma calibrated for the whole schedule, epsilon the one spent after one step
    q, delta = result["sample_rate"], result["delta"]
    assert q == pytest.approx(16 / result["train_size"])
    assert result["noise_multiplier"] == plan_privacy(8.0, delta, q, 2160, "rdp").noise_multiplier
    assert result["epsilon"] == pytest.approx(epsilon_spent(result["noise_multiplier"], q, 1, delta, "rdp"))
    assert 0 < result["epsilon"] < 1.0  # far below the target of the full run

    summary = [line for line in run.stdout.splitlines() if line.startswith("[cifar10_full] 1 of 2160 steps")]
    assert len(summary) == 1 and f"eps SPENT after these steps {result['epsilon']:.3f}" in summary[0]
    assert f"test acc {100 * result['test_accuracy']:.2f}%" in summary[0]


def test_a_small_copy_in_the_official_layout_is_labelled_and_a_cut_one_refused(cifar_bench, tmp_path):
    target = tmp_path / "cifar-10-batches-bin"
    write_cifar10_bin(target, 3)
    assert cifar_bench.prepare_root(tmp_path) == (
        tmp_path,
        "lossless; NOT the official CIFAR-10: 18 images (train + test) in its layout",
    )
    batch = target / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-1000])  # a transfer cut mid-record
    with pytest.raises(SystemExit, match=r"CIFAR-10 incomplete under .*\['data_batch_3.bin'\] missing or not whole"):
        cifar_bench.prepare_root(tmp_path)
    batch.unlink()
    with pytest.raises(SystemExit, match=r"\['data_batch_3.bin'\] missing"):
        cifar_bench.prepare_root(tmp_path)


def test_data_the_loader_refuses_is_one_line_not_a_traceback(cifar_bench, tmp_path):
    write_cifar10_bin(tmp_path / "cifar-10-batches-bin", 3)
    argv = ["--device", "cpu", "--max-steps", "1", "--data-root", str(tmp_path), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"^cifar10_full: error: .*val") as refused:
        cifar_bench.main([*argv, "--val-size", "1000"])  # more validation examples than the 15 training ones
    assert "\n" not in str(refused.value) and not (tmp_path / "out").exists()
