"""`eqdp-ray report`: plots, the page, and Optuna importances rebuilt from stored trials."""

from __future__ import annotations

import math
import random
import re
import struct
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from eqdp_ray.cli import main
from eqdp_ray.results import NoResults, ResultsStore
from eqdp_ray.results import report as report_module
from eqdp_ray.results.report import ADAPTIVE_SENTENCE, PLOTS, build_report, param_importances, study_from_trials

from .test_cli import build_store, run_config, trial_row

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def lr_study(root: Path, n: int = 16) -> ResultsStore:
    """A study where accuracy is driven by the learning rate alone (batch size, clip: noise-free no-ops)."""
    rng = random.Random(0)
    store = ResultsStore(str(root))
    rows = []
    for i in range(n):
        lr = math.exp(rng.uniform(math.log(0.25), math.log(4.0)))
        acc = 0.9 - 0.1 * abs(math.log2(lr))  # best at lr = 1
        model, group, order = rng.choice([("eq_resnet9", "dihedral", 4), ("eq_resnet9", "cyclic", 8)])
        config = run_config(
            model, group, order, lr=lr, batch_size=rng.choice([64, 128, 256]), clip=rng.uniform(0.5, 4.0)
        )
        rows.append(trial_row("lr", f"t{i:02d}", acc, minute=i, config=config, num_params=10000 + 1000 * i))
    store.write_trials(rows)
    return store


def test_report_writes_four_plots_and_a_page(tmp_path, capsys):
    store = build_store(tmp_path / "store")
    out = tmp_path / "report"
    code = main(["report", "--store", store.uri, "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    for name in PLOTS.values():
        path = out / name
        assert path.stat().st_size > 5000, name
        width, height = png_size(path)
        assert width >= 400 and height >= 200
        assert str(path) in stdout
    md = (out / "report.md").read_text()
    page = (out / "index.html").read_text()
    for name in PLOTS.values():
        assert f"]({name})" in md
        assert f"<img src='{name}'" in page
    assert "Plot skipped" not in md
    # the top-5 table, best first, with the per-trial epsilon
    top_lines = [line for line in md.splitlines() if line.startswith("| ") and "digits" in line]
    assert [line.split("|")[3].strip() for line in top_lines] == ["t01", "t05", "t00", "p1", "p2"]
    assert "| 1 | digits8 | t01 | completed | eq_resnet9 | C8->C4 | 0.9300 |" in md
    assert "<td>t01</td>" in page
    # privacy: per-trial targets, no search-level bound outside scope search, and the adaptive caveat
    assert "Study digits8: each trial is differentially private on its own with target epsilon 8" in md
    assert "epsilon spent by finished trials: 7.92" in md
    # digits1's rows carry a search_epsilon from a random-count search without scope search: exact scores left its
    # trials, so the Papernot-Steinke number is no guarantee and is not stated
    assert "Study digits1" in md and "2.6, 2e-05" not in md and "(search mode: random_count)" in md
    assert "No search-level epsilon covers this study (search mode: tpe)" in md
    assert ADAPTIVE_SENTENCE in md and ADAPTIVE_SENTENCE in page
    assert "Adaptive searches (TPE, ASHA) are not covered by a search-level bound" in md


def test_report_for_one_study_uses_optuna_importances(tmp_path):
    store = lr_study(tmp_path / "store")
    rep = build_report(store, tmp_path / "out", study="lr")
    assert all(rep.images[k] is not None for k in PLOTS), rep.notes
    imp = rep.importances
    assert imp is not None and imp.method == "optuna-fanova" and imp.from_optuna
    assert set(imp.values) == {
        "training.lr",
        "training.batch_size",
        "privacy.max_grad_norm",
        "model.options.group",
        "model.options.order",
    }
    assert max(imp.values, key=imp.values.get) == "training.lr"
    assert imp.values["training.lr"] > 0.5
    assert sum(imp.values.values()) == pytest.approx(1.0)

    # the same numbers as Optuna's own estimator on the rebuilt study
    study, _ = study_from_trials(store.read_trials("lr"))
    direct = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
    )
    assert imp.values == pytest.approx(direct)
    md = rep.markdown.read_text()
    assert "Optuna fANOVA importances over 16 finished trials" in md and "| training.lr |" in md
    assert "Fallback" not in md


def test_study_is_rebuilt_with_inferred_distributions(tmp_path):
    store = lr_study(tmp_path / "store", n=10)
    trials = store.read_trials("lr")
    study, dists = study_from_trials(trials)
    assert len(study.trials) == 10
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(trials["best_val_accuracy"]))
    assert isinstance(dists["training.lr"], FloatDistribution) and dists["training.lr"].log
    assert dists["training.lr"].low == pytest.approx(trials["config.training.lr"].min())
    assert dists["training.batch_size"] == CategoricalDistribution([64, 128, 256])
    assert dists["model.options.group"] == CategoricalDistribution(["cyclic", "dihedral"])
    # constants and identifiers are not parameters
    assert "model.name" not in dists and "data.name" not in dists and "name" not in dists
    assert "privacy.secret_seed" not in dists


def test_conditional_parameters_are_left_out_of_fanova_and_listed(tmp_path):
    store = build_store(tmp_path / "store")
    imp = param_importances(store.read_trials("digits8"))
    # 4 finished trials with accuracy: t00, t01, t02 (resnet9: no group/order/layout), t05
    assert imp.method == "optuna-fanova"
    assert "model.options.group" in imp.left_out and "model.name" in imp.values
    assert "not set in every trial" in imp.note


def test_fallback_when_too_few_trials_is_labelled(tmp_path):
    store = ResultsStore(str(tmp_path / "store"))
    store.write_trials([
        trial_row("s", "a", 0.6, minute=0, config=run_config(lr=1.0)),
        trial_row("s", "b", 0.8, minute=1, config=run_config(lr=2.0)),
    ])  # fmt: skip
    rep = build_report(store, tmp_path / "out")
    assert rep.images["importance"] is not None
    assert rep.importances.method == "fallback-spread"
    assert rep.importances.values == {"training.lr": pytest.approx(0.2)}
    md = rep.markdown.read_text()
    assert "Fallback, not fANOVA: 2 trials and 1 varying parameter are too few for fANOVA (it needs 3 and 2)" in md
    assert "| training.lr | 0.2000 |" in md


def test_fallback_when_optuna_fails(tmp_path, monkeypatch):
    store = lr_study(tmp_path / "store", n=6)

    class Broken:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("no forest today")

    monkeypatch.setattr(optuna.importance, "FanovaImportanceEvaluator", Broken)
    rep = build_report(store, tmp_path / "out")
    assert rep.importances.method == "fallback-spread"
    assert "Optuna's fANOVA failed (RuntimeError: no forest today)" in rep.notes["importance"]
    assert "Fallback, not fANOVA" in (tmp_path / "out" / "index.html").read_text()
    assert png_size(tmp_path / "out" / PLOTS["importance"])[0] > 0


def test_single_trial_study_skips_what_cannot_be_drawn(tmp_path):
    store = ResultsStore(str(tmp_path / "store"))
    store.write_trial(trial_row("one", "only", 0.7))
    out = tmp_path / "out"
    rep = build_report(store, out, study="one")
    assert rep.images["history"] and rep.images["pareto"] and rep.images["epsilon"]
    assert rep.images["importance"] is None and not (out / PLOTS["importance"]).exists()
    assert "needs at least 2 finished trials" in rep.notes["importance"]
    md = rep.markdown.read_text()
    assert "_Plot skipped: needs at least 2 finished trials" in md
    assert PLOTS["importance"] not in md and PLOTS["importance"] not in rep.html.read_text()
    assert "| 1 | one | only |" in md


def test_nans_and_missing_columns_skip_plots_with_notes(tmp_path):
    store = ResultsStore(str(tmp_path / "store"))
    # foreign-ish rows: no config, no num_params, no epsilon, one NaN accuracy
    store.write_trials([
        {"study": "bare", "trial_id": "a", "status": "completed", "best_val_accuracy": 0.5},
        {"study": "bare", "trial_id": "b", "status": "completed", "best_val_accuracy": float("nan")},
        {"study": "bare", "trial_id": "c", "status": "failed"},
    ])  # fmt: skip
    rep = build_report(store, tmp_path / "out")
    assert rep.images["history"] is not None
    assert rep.images["pareto"] is None and "parameter count" in rep.notes["pareto"]
    assert rep.images["epsilon"] is None and "epsilon" in rep.notes["epsilon"]
    assert rep.images["importance"] is None
    page = rep.html.read_text()
    assert page.count("Plot skipped") == 3
    assert "No search-level epsilon covers this study" in page and ADAPTIVE_SENTENCE in page


def test_report_without_ranked_trials_still_writes_a_page(tmp_path):
    store = ResultsStore(str(tmp_path / "store"))
    store.write_trial(trial_row("s", "a", None, status="running"))
    rep = build_report(store, tmp_path / "out")
    assert all(path is None for path in rep.images.values())
    assert "No finished trial has a validation accuracy." in rep.markdown.read_text()


def test_report_of_an_empty_store_or_unknown_study(tmp_path, capsys):
    with pytest.raises(NoResults):
        build_report(ResultsStore(str(tmp_path / "nothing")), tmp_path / "out")
    (tmp_path / "empty").mkdir()
    code = main(["report", "--store", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    _, err = capsys.readouterr()
    assert code == 1 and "no results" in err
    store = build_store(tmp_path / "store")
    code = main(["report", "--store", store.uri, "--study", "nope", "--out", str(tmp_path / "out")])
    _, err = capsys.readouterr()
    assert code == 2 and "unknown study 'nope'" in err


def test_a_plot_that_fails_is_a_note_not_a_crash(tmp_path, monkeypatch):
    store = build_store(tmp_path / "store")

    def broken(*args, **kwargs):
        raise KeyError("num_params")

    monkeypatch.setattr(report_module, "pareto_front", broken)
    rep = build_report(store, tmp_path / "out", study="digits8")
    assert rep.images["pareto"] is None and "KeyError" in rep.notes["pareto"]
    assert rep.images["history"] is not None and rep.images["importance"] is not None


def test_report_out_of_the_wrong_kind_is_one_clear_line(tmp_path, capsys):
    """A file as --out (or under it) used to end in a raw errno line ([Errno 17] File exists)."""
    store = ResultsStore(str(tmp_path / "s"))
    store.write_trial(trial_row("one", "a", 0.5))
    (tmp_path / "a-file").write_text("keep")
    for out, message in (
        (tmp_path / "a-file", f"--out {tmp_path}/a-file is an existing file, not a directory; pass a directory"),
        (tmp_path / "a-file" / "sub", f"--out {tmp_path}/a-file/sub: {tmp_path}/a-file is a file, not a directory"),
    ):
        assert main(["report", "--store", store.uri, "--out", str(out)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith(f"eqdp-ray: error: {message}")
        assert len(captured.err.splitlines()) == 1
    assert main(["report", "--store", store.uri, "--out", "/proc/eqdp-ray-report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eqdp-ray: error: --out /proc/eqdp-ray-report: /proc cannot be written")
    assert (tmp_path / "a-file").read_text() == "keep"


def test_report_counts_read_as_english_for_one_trial(tmp_path):
    """It said "1 trials" and "1 of 1 trials have"."""
    store = ResultsStore(str(tmp_path / "s"))
    store.write_trial(trial_row("one", "a", 0.5))
    rep = build_report(store, tmp_path / "out")
    md = rep.markdown.read_text()
    assert "; 1 trial (1 completed);" in md and "1 trials" not in md
    assert "1 of 1 trial has a validation accuracy" in md and "1 finished trial;" in md
    assert "; 1 trial (1 completed);" in rep.html.read_text()


def test_report_tables_round_epsilons_up(tmp_path):
    """The page's top table printed every float with 4 decimals, to nearest: an epsilon spent of 2.45314 read 2.4531."""
    store = ResultsStore(str(tmp_path / "s"))
    store.write_trial(trial_row("one", "a", 0.5, epsilon=2.45314))
    rep = build_report(store, tmp_path / "out")
    md, page = rep.markdown.read_text(), rep.html.read_text()
    assert "| 2.454 | 8 |" in md and "<td>2.454</td><td>8</td>" in page
    assert "2.4531" not in md and "2.4531" not in page


def test_report_page_path_taken_by_a_directory_is_one_clear_line(tmp_path, capsys):
    """It used to say "[Errno 21] Is a directory: '.../report.md'"."""
    store = ResultsStore(str(tmp_path / "s"))
    store.write_trial(trial_row("one", "a", 0.5))
    (tmp_path / "out" / "report.md").mkdir(parents=True)
    assert main(["report", "--store", store.uri, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"eqdp-ray: error: {tmp_path}/out/report.md: Is a directory; fix that path (or pass another one) and run again\n"
    )


# ------------------------------------------------------------------------------ Papernot-Steinke studies


def test_report_of_a_papernot_steinke_study_shows_only_what_its_bound_covers(tmp_path, capsys):
    """By default: the best trial, its config and score, the bound's statement; no other trial, no count."""
    from .test_cli import add_ps_study

    store = build_store(tmp_path / "store")
    add_ps_study(store)  # psx: s0..s3, best s1 (0.95)
    out = tmp_path / "report"
    assert main(["report", "--store", store.uri, "--study", "psx", "--out", str(out)]) == 0
    _, stderr = capsys.readouterr()
    md, page = (out / "report.md").read_text(), (out / "index.html").read_text()
    for text in (md, page):
        assert "s1" in text and not any(t in text for t in ("s0", "s2", "s3"))
        assert "best trial's configuration, score and model only" in text  # the Papernot-Steinke statement
        assert not re.search(r"\d+ (finished )?trials", text) and "4 completed" not in text
        assert "for the searcher only, do not publish" not in text
    assert "| 1 | psx | s1 | completed |" in md
    assert not (out / PLOTS["history"]).exists() and not (out / PLOTS["importance"]).exists()
    assert "psx: a Papernot-Steinke study: the report shows only its best trial" in stderr

    # the whole store: psx contributes its best trial only, and is not counted among the trials; psy, where no
    # trial finished, has no output at all
    store.write_trial(trial_row("psy", "y0", None, status="failed", search_mode="random_count", budget_scope="search"))
    whole = tmp_path / "whole"
    assert main(["report", "--store", store.uri, "--out", str(whole)]) == 0
    md = (whole / "report.md").read_text()
    assert "s1" in md and not any(f"| {t} |" in md for t in ("s0", "s2", "s3"))
    assert "10 trials (7 completed, 1 failed, 1 running, 1 stopped_early) and the best trial of psx" in md
    assert "Left out: psx:" in md  # of the history and importance plots
    assert "psy" not in md and "y0" not in md


def test_report_all_trials_shows_the_rest_marked_not_covered_for_the_searcher_only(tmp_path, capsys):
    from .test_cli import add_ps_study

    store = build_store(tmp_path / "store")
    add_ps_study(store)
    out = tmp_path / "report"
    assert main(["report", "--store", store.uri, "--study", "psx", "--out", str(out), "--all-trials"]) == 0
    _, stderr = capsys.readouterr()
    md, page = (out / "report.md").read_text(), (out / "index.html").read_text()
    assert all(f"| {t} |" in md for t in ("s0", "s1", "s2", "s3")) and "4 trials (4 completed)" in md
    warning = "NOT covered by the search's epsilon: for the searcher only, do not publish"
    assert md.startswith("# eqdp-ray report: study psx (NOT covered: for the searcher only)")
    assert md.splitlines()[2].startswith(f"> **{warning}")  # at the top, before anything else
    assert f"<p class='not-covered'>{warning}" in page and page.index("not-covered") < page.index("<table>")
    assert (out / PLOTS["history"]).exists()
    assert "psx: the report's trials beyond the best and their number are NOT covered" in stderr
    # an ordinary study is not marked, with or without the flag
    plain = tmp_path / "plain"
    assert main(["report", "--store", store.uri, "--study", "digits8", "--out", str(plain), "--all-trials"]) == 0
    assert "searcher only" not in (plain / "report.md").read_text()
