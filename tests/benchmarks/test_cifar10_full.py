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

import numpy as np
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
    # a count is a share of the official 50,000 training images: 10,000 holds out about 40 of these 200
    argv += ["--val-size", "10000", "--batch-size", "16", "--physical-batch-size", "16", "--out", str(out)]
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
        cifar_bench.main([*argv, "--val-size", "50000"])  # all of the official 50,000: none left to train
    assert "\n" not in str(refused.value) and not (tmp_path / "out").exists()


def _official_layout(root, per_file=3):
    files = write_cifar10_bin(root / "cifar-10-batches-bin", per_file)
    (root / "cifar-10-batches-bin" / "batches.meta.txt").write_text("airplane\nautomobile\n")
    return files


def test_a_pack_in_parts_unpacks_to_the_same_files(cifar_bench, tmp_path):
    _official_layout(tmp_path / "src")
    packed = tmp_path / "packed"
    cifar_bench.main(["--pack", str(packed), "--data-root", str(tmp_path / "src")])
    assert sorted(p.name for p in packed.iterdir()) == sorted(cifar_bench.PARTS)
    root, note = cifar_bench.prepare_root(packed)
    source, unpacked = tmp_path / "src" / "cifar-10-batches-bin", root / "cifar-10-batches-bin"
    for name in cifar_bench.BIN_FILES + ["batches.meta.txt"]:
        assert (unpacked / name).read_bytes() == (source / name).read_bytes(), name
    assert note == "lossless; NOT the official CIFAR-10: 18 images (train + test) in its layout"


@pytest.mark.parametrize("bits", [3, 7])
def test_a_lossy_pack_is_labelled_and_within_its_stated_error(cifar_bench, tmp_path, bits, capsys):
    original = _official_layout(tmp_path / "src")
    packed = tmp_path / "packed"
    cifar_bench.main(["--pack", str(packed), "--lossy-bits", str(bits), "--data-root", str(tmp_path / "src")])
    assert f"max error {2 ** (7 - bits)}/255" in capsys.readouterr().out
    root, note = cifar_bench.prepare_root(packed)
    assert note.startswith(f"LOSSY: pixels quantised to {bits} bits")
    for name, (pixels, labels) in original.items():
        records = np.fromfile(root / "cifar-10-batches-bin" / name, dtype=np.uint8).reshape(-1, 3073)
        assert np.array_equal(records[:, 0], labels)
        error = np.abs(records[:, 1:].astype(int) - pixels.reshape(len(labels), -1).astype(int))
        assert error.max() <= 2 ** (7 - bits)


def test_lossy_bits_outside_1_to_7_are_refused(cifar_bench, tmp_path):
    _official_layout(tmp_path / "src")
    with pytest.raises(SystemExit, match=r"--lossy-bits must lie in 1\.\.7"):
        cifar_bench.main(["--pack", str(tmp_path / "p"), "--lossy-bits", "8", "--data-root", str(tmp_path / "src")])


def test_minutes_mode_fits_the_steps_to_the_time_from_a_probe(tmp_path):
    write_cifar10_bin(tmp_path / "data" / "cifar-10-batches-bin", PER_FILE)
    out = tmp_path / "out"
    argv = ["--eps", "8", "--device", "cpu", "--minutes", "0.05", "--data-root", str(tmp_path / "data")]
    # a count is a share of the official 50,000 training images: 10,000 holds out about 40 of these 200
    argv += ["--val-size", "10000", "--batch-size", "16", "--physical-batch-size", "16", "--out", str(out)]
    paths = [str(BENCHMARKS_DIR.parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    run = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    probe = [line for line in run.stdout.splitlines() if line.startswith("[cifar10_full] probe:")]
    assert len(probe) == 1
    steps = int(probe[0].split("-> ")[1].split()[0])
    assert steps >= 1 and sorted(p.name for p in out.iterdir()) == [f"eps8_steps{steps}.json"]
    result = json.loads((out / f"eps8_steps{steps}.json").read_text())
    assert (result["steps"], result["schedule_steps"]) == (steps, 2160)
    assert result["epsilon"] == pytest.approx(
        epsilon_spent(result["noise_multiplier"], result["sample_rate"], steps, result["delta"], "rdp")
    )
