"""Ranking (`best`) and the per-study summary (`list_studies`)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from eqdp_ray.results import ResultsStore, ResultsStoreError

from .helpers import T0, trial


@pytest.fixture()
def store(tmp_path):
    s = ResultsStore(str(tmp_path / "store"))
    s.write_trials(
        [
            trial("a", "a1", best_val_accuracy=0.70, target_epsilon=1.0, wall_time_s=30.0),
            trial("a", "a2", best_val_accuracy=0.90, target_epsilon=8.0, wall_time_s=50.0),
            trial("a", "a3", best_val_accuracy=0.80, target_epsilon=8.0, wall_time_s=10.0, status="stopped_early"),
            trial("a", "a4", best_val_accuracy=0.99, target_epsilon=8.0, status="failed"),
            trial("a", "a5", best_val_accuracy=0.98, target_epsilon=8.0, status="running"),
            trial("a", "a6", best_val_accuracy=None, target_epsilon=8.0),
            trial("a", "a7", best_val_accuracy=float("nan"), target_epsilon=8.0),
        ]
    )
    s.write_trial(trial("b", "b1", best_val_accuracy=0.85, target_epsilon=8.0 + 1e-12, test_accuracy=0.2))
    s.write_trial(trial("b", "b2", best_val_accuracy=0.95, target_epsilon=8.000001))
    return s


def test_best_orders_by_metric_and_keeps_only_finished_trials(store):
    top = store.best()
    assert top["trial_id"].tolist() == ["b2", "a2", "b1", "a3", "a1"]
    assert top["rank"].tolist() == [1, 2, 3, 4, 5]
    assert set(top["status"]) <= {"completed", "stopped_early"}
    # full rows come back, config included
    assert top.iloc[0]["config.model.group"] == "C8"


def test_best_top_k_and_all(store):
    assert store.best(top=2)["trial_id"].tolist() == ["b2", "a2"]
    assert len(store.best(top=None)) == 5  # a4 failed, a5 running, a6/a7 have no value
    with pytest.raises(ResultsStoreError, match="top"):
        store.best(top=0)


def test_best_epsilon_filter_matches_target_within_tolerance(store):
    top = store.best(epsilon=8)
    # a1 (target 1) and b2 (target 8.000001) are excluded; b1 (8 + 1e-12) matches
    assert top["trial_id"].tolist() == ["a2", "b1", "a3"]
    assert store.best(epsilon=1.0)["trial_id"].tolist() == ["a1"]
    assert store.best(epsilon=3.0).empty


def test_best_for_one_study(store):
    assert store.best(study="b")["trial_id"].tolist() == ["b2", "b1"]
    with pytest.raises(ResultsStoreError, match=r"unknown study 'c'; known studies: a, b"):
        store.best(study="c")


def test_metric_alias_other_metrics_and_min_mode(store):
    assert store.best(metric="val_accuracy")["trial_id"].tolist() == store.best()["trial_id"].tolist()
    assert store.best(metric="test_accuracy", top=1)["trial_id"].tolist() == ["a1"]  # 0.47 ties -> study, id
    assert store.best(study="a", metric="wall_time_s", mode="min")["trial_id"].tolist() == [
        "a3",
        "a1",
        "a2",
        "a6",
        "a7",
    ]


def test_unknown_metric_lists_valid_choices(store):
    with pytest.raises(ResultsStoreError) as err:
        store.best(metric="accuracy")
    message = str(err.value)
    assert "accuracy" in message and "best_val_accuracy" in message and "val_accuracy (= best_val_accuracy)" in message
    assert isinstance(err.value, ValueError)
    with pytest.raises(ResultsStoreError, match="not numeric"):
        store.best(metric="accountant")
    with pytest.raises(ResultsStoreError, match="mode"):
        store.best(mode="highest")


def test_ties_are_broken_deterministically(tmp_path):
    store = ResultsStore(str(tmp_path))
    # written in scrambled order, one file each
    for study, tid in [("z", "2"), ("a", "9"), ("z", "1"), ("a", "10")]:
        store.write_trial(trial(study, tid, best_val_accuracy=0.5))
    expected = [("a", "10"), ("a", "9"), ("z", "1"), ("z", "2")]
    for _ in range(3):
        top = ResultsStore(str(tmp_path)).best(top=None)
        assert list(zip(top["study"], top["trial_id"])) == expected


def test_best_uses_the_latest_version_of_each_trial(store):
    store.write_trial(trial("b", "b2", status="failed", best_val_accuracy=0.95, target_epsilon=8.000001))
    store.write_trial(trial("a", "a5", status="completed", best_val_accuracy=0.98, target_epsilon=8.0))
    assert store.best(top=2)["trial_id"].tolist() == ["a5", "a2"]


def test_best_ranks_across_many_files(tmp_path):
    store = ResultsStore(str(tmp_path))
    for i in range(40):
        store.write_trial(trial("s", f"t{i:02d}", best_val_accuracy=(i * 7919 % 40) / 40))
    top = store.best(top=3)
    assert top["best_val_accuracy"].tolist() == [39 / 40, 38 / 40, 37 / 40]


def test_list_studies_summarizes_each_study(store):
    store.write_trial(trial("b", "b3", status="running", target_epsilon=2.0, started_at=T0 - pd.Timedelta(hours=1)))
    df = store.list_studies().set_index("study")
    assert list(df.index) == ["a", "b"]
    a, b = df.loc["a"], df.loc["b"]
    assert a["n_trials"] == 7 and a["n_completed"] == 4 and a["n_stopped_early"] == 1
    assert a["n_failed"] == 1 and a["n_running"] == 1
    assert a["best_val_accuracy"] == 0.90  # failed 0.99 and running 0.98 don't count
    assert math.isnan(a["target_epsilon"]) and a["target_epsilons"] == "1,8"
    assert b["n_trials"] == 3 and b["n_running"] == 1
    assert b["first_started_at"] == pd.Timestamp(T0 - pd.Timedelta(hours=1))
    assert b["last_finished_at"] == pd.Timestamp(T0 + pd.Timedelta(minutes=5))
    assert pd.notna(b["last_written_at"])
