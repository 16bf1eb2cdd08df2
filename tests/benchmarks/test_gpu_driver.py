"""The GPU call's driver at its tiny CPU size, in the current environment: every step guarded."""

from __future__ import annotations

import json

import pytest

from tests.data.formats import write_cifar10_bin


@pytest.mark.slow
def test_a_failing_step_leaves_the_others_figures(driver, tmp_path):
    out = tmp_path / "out"
    code = driver.main(
        [
            "--device",
            "cpu",
            "--tiny",
            "--out",
            str(out),
            "--data",
            str(tmp_path / "absent.xz"),
            "--steps",
            "cifar,versions",
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert code == 1
    assert summary["cifar"]["status"].startswith("failed") and "no data pack" in (out / "cifar.log").read_text()
    versions = summary["versions"]["figures"]
    assert summary["versions"]["status"] == "ok" and versions["escnn_model_builds"] is True
    assert versions["torch"].startswith(versions["pkg:torch"].split()[0].split("+")[0]) and "cuda_available" in versions


@pytest.mark.slow
def test_tiny_cifar_step_runs_the_recipe_at_its_sample_rate(driver, datapack, tmp_path):
    write_cifar10_bin(tmp_path / "src" / "cifar-10-batches-bin", n_per_batch=40)
    pack = tmp_path / "pack.npz.xz"
    datapack.pack(tmp_path / "src", pack, train=200, test=40, bits=5)  # fewer than --tiny's subsets: all kept
    out = tmp_path / "out"
    assert driver.main(["--device", "cpu", "--tiny", "--out", str(out), "--data", str(pack), "--steps", "cifar"]) == 0
    figures = json.loads((out / "summary.json").read_text())["cifar"]["figures"]
    assert figures["train_size"] + figures["val_size"] == 200 and 10 <= figures["val_size"] <= 30  # a tenth, by hash
    assert figures["test_size"] == 40
    assert figures["expected_batch"] == round(8192 * figures["train_size"] / 45000)  # the recipe's q kept
    assert figures["sample_rate"] == pytest.approx(8192 / 45000, rel=0.01)
    assert 1 <= figures["steps"] <= 2 and 0 < figures["epsilon"] <= 8.0 and figures["noise_source"] == "secure"
    assert figures["samples_per_s"] > 0 and 0 <= figures["test_accuracy"] <= 1
    assert "[eqdp-ray] done" in (out / "cifar.log").read_text()
