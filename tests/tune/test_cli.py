"""`eqdp-ray tune`: a thin face over run_search / validate_space; bad input is one clear error, exit 2."""

import textwrap

from eqdp_ray.cli import main

SPACE = """
    study: cli
    privacy: {target_epsilon: 2.0, delta: 1.0e-5}
    data: {name: digits}
    fixed:
      training.steps: 10
    search:
      training.lr: {type: loguniform, low: 0.5, high: 4.0}
      training.batch_size: {type: categorical, choices: [64, 128]}
    sampler: {type: random}
    num_samples: {distribution: truncated_negative_binomial, mean: 5}
"""


def write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


def test_check_validates_and_prints_the_search_privacy(tmp_path, capsys):
    assert main(["tune", write(tmp_path, SPACE), "--check"]) == 0
    out = capsys.readouterr().out
    assert (
        "study 'cli' is valid" in out
        and "Theorem 2" in out
        and "(mean 5)" in out
        and "1e-05)-DP for the best trial's configuration, score and model only" in out
        and "the number of trials or attempts" in out  # what a Papernot-Steinke bound does not cover, said
        and "for the whole study" not in out
    )


def test_check_of_scope_trial_random_count_prints_no_search_bound(tmp_path, capsys):
    """Scope trial: every trial releases exact scores, so no Papernot-Steinke bound is printed."""
    space = SPACE.replace("delta: 1.0e-5}", "delta: 1.0e-5, scope: trial}")
    assert main(["tune", write(tmp_path, space), "--check"]) == 0
    out = capsys.readouterr().out
    assert "study 'cli' is valid" in out
    assert "Theorem" not in out and "search privacy" not in out and "-DP" not in out


def test_bad_space_is_one_clear_error(tmp_path, capsys):
    path = write(tmp_path, SPACE.replace("training.lr:", "training.lrr:"))
    assert main(["tune", path, "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eqdp-ray: error: ") and "space.yaml:7: 'search.training.lrr'" in err
    assert "did you mean 'training.lr'" in err and "Traceback" not in err


def test_set_overrides_reach_the_space(tmp_path, capsys):
    path = write(tmp_path, SPACE)
    assert main(["tune", path, "--check", "--set", "search.training.lr.low=5"]) == 2
    assert "--set search.training.lr.low" in capsys.readouterr().err
    assert main(["tune", path, "--check", "--set", "fixed.training.steps=20"]) == 0


def test_a_set_that_conflicts_with_the_space_names_the_set(tmp_path, capsys):
    """Fixing a searched key with --set used to blame the file's line and say 'fixed (line ?)'."""
    path = write(tmp_path, SPACE)
    for extra, expected in (
        (["--set", "fixed.training.lr=1.0"], "eqdp-ray: error: --set fixed.training.lr: 'training.lr' is both fixed"),
        (["--set", "fixed.training.epochs=2"], "eqdp-ray: error: --set fixed.training.epochs: set only one of"),
        (["--set", "num_samples=3", "--set", "num_samples=4"], "eqdp-ray: error: --set num_samples is given twice"),
    ):
        assert main(["tune", path, "--check", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(expected) and "\n" not in err, err


def test_resume_without_a_study_fails_cleanly(tmp_path, capsys):
    path = write(tmp_path, SPACE)
    assert main(["tune", path, "--resume", "--store", str(tmp_path / "store")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_unwritable_store_fails_before_any_trial(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["tune", write(tmp_path, SPACE), "--store", str(blocker / "store")])
    err = capsys.readouterr().err
    assert code == 2 and "results store" in err and "not writable" in err and "Traceback" not in err
    assert blocker.read_text() == "not a directory"  # nothing lost


def test_a_delta_not_below_one_over_n_is_refused_before_any_trial(tmp_path, capsys):
    path = write(tmp_path, SPACE.replace("delta: 1.0e-5", "delta: 0.01"))
    assert main(["tune", path, "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eqdp-ray: error: ") and "not below 1/N" in err and "Traceback" not in err
