"""`eqdp-ray train` end to end, and its one-line errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eqdp_ray.cli import main

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")

TINY = [
    "--set",
    "model.options={group: dihedral, order: 4, layout: [2, 4, 4], num_groups: 2}",
    "--set",
    "training.steps=2",
    "--set",
    "training.epochs=null",
    "--set",
    "training.batch_size=64",
]


def test_train_writes_result_json(tmp_path, capsys):
    assert main(["train", QUICKSTART, *TINY, "--output", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["steps"] == 2 and result["epsilon"] <= result["target_epsilon"]
    out = capsys.readouterr().out
    assert "eps" in out and "samples/s" in out and "result written" in out


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--set", "model.name=vgg"], "unknown model"),
        (["--set", "model.options.group=icosahedral"], "group"),
        (["--set", "privacy.target_epsilon=0"], "privacy.target_epsilon: must be > 0"),
        (["--set", "privacy.delta=1.5"], "delta"),
        (["--set", "privacy.delta=0.01"], "not below 1/N"),
        (["--set", "privacy.target_epsilon=0.00001"], "no noise multiplier"),
        (["--set", "data.name=cifar10", "--set", "data.root=/nonexistent/dir"], "/nonexistent/dir"),
        (["--set", "training.lr_schedule=cosine"], "training.lr_schedule: unknown key; valid keys here"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--set", "device=tpu"], "not a device torch knows"),
        (["--workers", "2", "--gpus-per-worker", "1"], "no CUDA GPU"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, capsys, extra, match):
    code = main(["train", QUICKSTART, *TINY, *extra, "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("eqdp-ray: error:") and "Traceback" not in err
    assert pytest.importorskip("re").search(match, err), err
    assert not (tmp_path / "result.json").exists()


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "eqdp_ray.cli", "train", str(tmp_path / "missing.yaml")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "config file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_models_lists_parameter_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "eq_resnet9" in out and "resnet9" in out and "wrn16_4" in out


def test_more_workers_than_cores_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch):
    """A local Ray used to advertise max(cores, workers) CPUs, so 16 workers ran on 2 cores."""
    import os

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    workers = (os.cpu_count() or 1) + 1
    code = main(["train", QUICKSTART, "--workers", str(workers), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"need {workers} CPUs" in err and "--oversubscribe" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["file", "file/below"])
def test_output_that_cannot_be_a_directory_fails_before_training(tmp_path, capsys, where):
    """It used to train for minutes, then lose the result in a FileExistsError traceback."""
    (tmp_path / "file").write_text("keep me")
    code = main(["train", QUICKSTART, *TINY, "--output", str(tmp_path / where)])
    captured = capsys.readouterr()
    assert code == 2 and ("is a file, not a directory" in captured.err or "is an existing file" in captured.err)
    assert captured.err.startswith("eqdp-ray: error:") and "Traceback" not in captured.err
    assert "step" not in captured.out  # not one training step ran
    assert (tmp_path / "file").read_text() == "keep me" and [p.name for p in tmp_path.iterdir()] == ["file"]


def test_an_output_that_cannot_be_written_fails_before_training(capsys):
    # os.access would let root through; writing for real does not (here /proc takes no new directory)
    assert main(["train", QUICKSTART, *TINY, "--output", "/proc/eqdp-ray-test"]) == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and "eps spent" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, expected",
    [
        (  # it blamed training.batch_size alone, when the tiny subset was what the user had to change
            ["--set", "training.steps=2", "--set", "training.epochs=null", "--set", "data.train_subset=10"],
            r"only \d+ examples because data\.train_subset=10 keeps about that many.*raise data\.train_subset",
        ),
        (  # it said 'set exactly one', not which
            ["--set", "training.steps=2"],
            r"--set training\.steps: .*the config also sets 'training\.epochs' .*--set training\.epochs=null",
        ),
        (  # the last one silently won
            ["--set", "training.lr=1", "--set", "training.lr=3"],
            r"--set training\.lr is given twice",
        ),
    ],
)
def test_set_mistakes_are_one_line_that_says_what_to_change(tmp_path, capsys, extra, expected):
    import re

    code = main(["train", QUICKSTART, *extra, "--output", str(tmp_path / "out")])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("eqdp-ray: error: "), captured.err
    assert re.search(expected, lines[0]), lines[0]
    assert "step" not in captured.out and not (tmp_path / "out").exists()


def test_printed_epsilons_are_rounded_up_never_down(tmp_path, capsys):
    """The target used to print unrounded (7.999999999) and the epsilon spent rounded to nearest, which can
    read below what was accounted."""
    import re

    assert (
        main(["train", QUICKSTART, *TINY, "--set", "privacy.target_epsilon=7.999999999", "--output", str(tmp_path)])
        == 0
    )
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "result.json").read_text())
    assert "target eps=8 " in out and "(target 8)" in out and "7.999" not in out, out
    spent = re.search(r"eps spent (\S+) ", out).group(1)
    assert len(spent.replace(".", "").lstrip("0")) <= 4 and float(spent) >= result["epsilon"]
