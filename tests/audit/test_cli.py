"""`eqdp-ray audit` end to end (one process), and its one-line errors for bad input."""

import json
from pathlib import Path

import pytest

from eqdp_ray.cli import main
from tests.audit.test_run import TRAIN_SIZE

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")

TINY = [
    "--set",
    "model.options={group: dihedral, order: 4, layout: [2, 4, 4], num_groups: 2}",
    "--set",
    "data.train_subset=200",
    "--set",
    "training.steps=1",
    "--set",
    "training.epochs=null",
    "--set",
    f"training.batch_size={TRAIN_SIZE}",  # every training example at every step (q = 1)
]


def test_audit_prints_the_bound_beside_the_claim_and_writes_audit_json(tmp_path, capsys):
    assert main(["audit", QUICKSTART, *TINY, "--canaries", "500", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "epsilon lower bound" in out and "vs claimed epsilon" in out and "consistent with the claim" in out
    record = json.loads((tmp_path / "audit.json").read_text())
    assert record["canaries"] == 500 and len(record["included"]) == 500
    assert record["coins"].startswith("secure")  # a CLI audit draws its coins from the OS
    assert 0 <= record["epsilon_lower_bound"] <= record["claimed_epsilon"] <= 8.0
    assert not (tmp_path / "result.json").exists()


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--canaries", "0"], "--canaries must be at least 1"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--confidence", "1.5"], "--confidence must lie strictly between 0 and 1"),
        (["--canaries", "100000"], "use fewer canaries"),
        (["--canaries", "1e8"], "--canaries must be at least 1 and at most 100,000, got 100000000"),
        (["--confidence", "nan"], "--confidence must lie strictly between 0 and 1"),
        (["--set", "privacy.target_epsilon=0"], "target_epsilon"),
    ],
)
def test_bad_input_is_one_line(extra, match, tmp_path, capsys):
    assert main(["audit", QUICKSTART, *TINY, *extra, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eqdp-ray: error:") and match in err and "\n" not in err
    assert not (tmp_path / "audit.json").exists()


def test_an_output_that_is_a_file_fails_before_the_audit_runs(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("kept")
    assert main(["audit", QUICKSTART, *TINY, "--output", str(blocker)]) == 2
    captured = capsys.readouterr()
    assert "is an existing file" in captured.err and "bound" not in captured.out and blocker.read_text() == "kept"


@pytest.mark.parametrize("extra", [["--canaries", "100000000"], ["--canaries", "1e8"], ["--workers", "-1"]])
def test_bad_audit_arguments_are_refused_before_any_coin_is_drawn(extra, tmp_path, capsys, monkeypatch):
    """A huge --canaries used to draw every coin (minutes, gigabytes) before anything checked the count."""
    import eqdp_ray.audit.run

    def no_coins(*args, **kwargs):
        raise AssertionError("coins were drawn before the arguments were checked")

    monkeypatch.setattr(eqdp_ray.audit.run, "draw_coins", no_coins)
    assert main(["audit", QUICKSTART, *TINY, *extra, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eqdp-ray: error: --") and "\n" not in err and "must be at least 1" in err
    assert not (tmp_path / "out").exists()
