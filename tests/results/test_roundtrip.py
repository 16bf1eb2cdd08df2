"""Writing and reading trials/history back, superseding, config reconstruction, URIs."""

from __future__ import annotations

import datetime as dt
import math
import os

import pandas as pd
import pytest

from eqdp_ray import __version__
from eqdp_ray.results import ResultsStore, ResultsStoreError, config_from_row

from .helpers import T0, trial


@pytest.fixture()
def store(tmp_path):
    return ResultsStore(str(tmp_path / "store"))


def test_trial_round_trip_keeps_values_and_types(store):
    store.write_trial(trial(trial_id="a", best_val_accuracy=0.91, search_epsilon=2.0, search_delta=1e-6))
    store.write_trial(trial(trial_id="b", status="stopped_early", noise_multiplier=2.5, sigma=None))

    df = store.read_trials()
    assert list(df["trial_id"]) == ["a", "b"]
    a, b = df.iloc[0], df.iloc[1]
    assert a["study"] == "s" and a["status"] == "completed"
    assert a["best_val_accuracy"] == 0.91
    assert a["steps"] == 1500 and a["num_params"] == 12345
    assert a["accountant"] == "prv" and a["delta"] == 1e-5
    assert a["search_epsilon"] == 2.0 and a["search_delta"] == 1e-6
    assert math.isnan(b["search_epsilon"])  # optional column: null when not given
    assert a["package_version"] == __version__
    assert a["started_at"] == pd.Timestamp(T0)
    assert str(df["started_at"].dt.tz) == "UTC"
    assert a["finished_at"] - a["started_at"] == pd.Timedelta(minutes=5)
    assert a["config.lr"] == 0.01 and a["config.model.group"] == "C8"
    assert bool(a["config.model.equivariant"]) is True
    assert b["sigma"] == 2.5  # noise_multiplier is accepted as sigma
    assert b["status"] == "stopped_early"
    assert pd.notna(a["written_at"]) and a["written_at"] < b["written_at"]


def test_timestamps_accept_iso_strings_epoch_seconds_and_naive_datetimes(store):
    store.write_trial(trial(trial_id="iso", started_at="2024-05-01T14:00:00+02:00", finished_at=None))
    store.write_trial(trial(trial_id="epoch", started_at=T0.timestamp()))
    store.write_trial(trial(trial_id="naive", started_at=dt.datetime(2024, 5, 1, 12, 0)))
    df = store.read_trials().set_index("trial_id")
    for tid in ("iso", "epoch", "naive"):
        assert df.loc[tid, "started_at"] == pd.Timestamp(T0), tid
    assert pd.isna(df.loc["iso", "finished_at"])


def test_extra_keys_become_columns(store):
    store.write_trial(trial(trial_id="a", val_loss=0.3, host="node-1", tags=["x", "y"], seed=7))
    store.write_trial(trial(trial_id="b"))
    df = store.read_trials().set_index("trial_id")
    assert df.loc["a", "val_loss"] == 0.3 and math.isnan(df.loc["b", "val_loss"])
    # A missing text value: None under pandas 2, NaN under pandas 3's string dtype.
    assert df.loc["a", "host"] == "node-1" and pd.isna(df.loc["b", "host"])
    assert df.loc["a", "tags"] == '["x", "y"]'  # containers are kept as JSON text
    assert df.loc["a", "seed"] == 7


def test_invalid_rows_are_rejected_before_anything_is_written(store):
    with pytest.raises(ResultsStoreError, match="status must be one of"):
        store.write_trials([trial(trial_id="ok"), trial(trial_id="bad", status="done")])
    with pytest.raises(ResultsStoreError, match="study"):
        store.write_trial({"trial_id": "x", "status": "completed"})
    with pytest.raises(ResultsStoreError, match="steps"):
        store.write_trial(trial(steps="many"))
    assert store.studies() == []


def test_rewriting_a_trial_supersedes_the_old_row(store):
    store.write_trial(trial(trial_id="t", status="running", best_val_accuracy=None, finished_at=None))
    assert store.read_trials()["status"].tolist() == ["running"]
    store.write_trial(trial(trial_id="t", status="completed", best_val_accuracy=0.8))
    store.write_trial(trial(trial_id="other", status="running"))

    df = store.read_trials()
    assert sorted(df["trial_id"]) == ["other", "t"]
    row = df.set_index("trial_id").loc["t"]
    assert row["status"] == "completed" and row["best_val_accuracy"] == 0.8
    # filters see only the latest version: "t" is no longer running
    assert store.read_trials(status="running")["trial_id"].tolist() == ["other"]
    # every stored version remains available on request
    assert len(store.read_trials(latest_only=False)) == 3


def test_later_write_wins_even_if_it_is_a_failure(store):
    store.write_trial(trial(trial_id="t", best_val_accuracy=0.99))
    store.write_trial(trial(trial_id="t", status="failed", best_val_accuracy=None))
    assert store.read_trials()["status"].tolist() == ["failed"]
    assert store.best(study="s").empty


def test_a_re_read_row_can_be_written_back(store):
    store.write_trial(trial(trial_id="t", config={"lr": 0.1, "layers": {"n": 3}}))
    row = store.read_trials().iloc[0].to_dict()
    row["test_accuracy"] = 0.77
    store.write_trial(row)
    df = store.read_trials()
    assert len(df) == 1 and df.iloc[0]["test_accuracy"] == 0.77
    assert config_from_row(df.iloc[0]) == {"lr": 0.1, "layers": {"n": 3}}


def test_within_one_batch_the_later_row_wins(store):
    store.write_trials([trial(trial_id="t", status="running"), trial(trial_id="t", best_val_accuracy=0.6)])
    df = store.read_trials()
    assert df["status"].tolist() == ["completed"] and df["best_val_accuracy"].tolist() == [0.6]


def test_history_round_trip_and_filters(store):
    rows = [
        {"study": "s", "trial_id": tid, "epoch": e, "step": 100 * e, "train_loss": 1.0 / (e + 1),
         "train_accuracy": 0.1 * e, "val_accuracy": 0.09 * e, "epsilon": 0.5 * e, "samples_per_s": 900.0,
         "timestamp": T0 + dt.timedelta(minutes=e), "lr": 0.01}
        for tid in ("a", "b") for e in range(1, 4)
    ]  # fmt: skip
    store.write_history(rows[:3])
    store.write_history(rows[3:])
    df = store.read_history("s")
    assert len(df) == 6
    assert df[["trial_id", "epoch"]].values.tolist() == [[t, e] for t in ("a", "b") for e in (1, 2, 3)]
    assert df["step"].tolist() == [100, 200, 300] * 2
    assert df["lr"].tolist() == [0.01] * 6  # extra column kept
    assert df["timestamp"].iloc[0] == pd.Timestamp(T0 + dt.timedelta(minutes=1))
    only_b = store.read_history(trial_id="b")
    assert set(only_b["trial_id"]) == {"b"} and len(only_b) == 3


def test_history_relogged_epochs_keep_latest(store):
    store.write_history([{"study": "s", "trial_id": "a", "epoch": e, "step": e, "val_accuracy": 0.1} for e in (1, 2)])
    store.write_history([{"study": "s", "trial_id": "a", "epoch": 2, "step": 2, "val_accuracy": 0.9}])
    df = store.read_history()
    assert df["val_accuracy"].tolist() == [0.1, 0.9]
    assert len(store.read_history(latest_only=False)) == 3


def test_unknown_study_is_an_error_listing_known_ones(store):
    store.write_trial(trial(study="alpha"))
    with pytest.raises(ResultsStoreError, match="known studies: alpha"):
        store.read_trials("alhpa")
    with pytest.raises(ResultsStoreError, match="unknown study"):
        store.read_history("nope")


def test_empty_store_reads_empty_frames(tmp_path):
    store = ResultsStore(str(tmp_path / "nothing"))
    assert store.read_trials().empty and "best_val_accuracy" in store.read_trials().columns
    assert store.read_history().empty
    assert store.list_studies().empty
    assert store.best().empty
    assert not (tmp_path / "nothing").exists()  # reading creates nothing


def test_config_from_row_restores_nested_types(store):
    cfg_a = {
        "lr": 0.001,
        "batch_size": 256,
        "epochs": 3,
        "model": {"group": "D4", "width": 32, "equivariant": False, "dropout": None},
        "privacy": {"max_grad_norm": 1.0, "target_epsilon": 8},
        "widths": [8, 16],
    }
    cfg_b = {"lr": 0.01, "model": {"group": "C4"}}  # lacks most keys -> int columns get NaN
    store.write_trial(trial(trial_id="a", config=cfg_a))
    store.write_trial(trial(trial_id="b", config=cfg_b))
    df = store.read_trials().set_index("trial_id")
    assert df["config.batch_size"].dtype.kind == "f"  # pandas made it float because of b
    back = config_from_row(df.loc["a"])
    assert back == cfg_a
    assert type(back["batch_size"]) is int and type(back["model"]["equivariant"]) is bool
    assert type(back["privacy"]["max_grad_norm"]) is float and type(back["privacy"]["target_epsilon"]) is int
    assert config_from_row(df.loc["b"]) == cfg_b
    # flat config.* keys (no nested "config") are accepted too
    store.write_trial(trial(trial_id="c", config=None, **{"config.opt.name": "adam", "config.opt.beta": 0.9}))
    assert config_from_row(store.read_trials(trial_id="c").iloc[0]) == {"opt": {"name": "adam", "beta": 0.9}}


def test_config_from_row_without_config_json_uses_columns():
    row = pd.Series({"study": "s", "config.a.b": 1.5, "config.a.c": "x", "config.d": float("nan"), "config.e": None})
    assert config_from_row(row) == {"a": {"b": 1.5, "c": "x"}}
    assert config_from_row({"config.flag": True, "config_json": None}) == {"flag": True}


def test_file_uri_and_plain_path_see_the_same_store(tmp_path):
    root = tmp_path / "uri store"
    via_uri = ResultsStore(root.as_uri())  # file:///.../uri%20store
    via_uri.write_trial(trial(trial_id="u"))
    assert (root / "trials").is_dir()
    plain = ResultsStore(str(root))
    plain.write_trial(trial(trial_id="p"))
    assert sorted(via_uri.read_trials()["trial_id"]) == ["p", "u"]
    assert via_uri.best(study="s")["trial_id"].tolist() == ["p", "u"]


def test_default_uri_is_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ResultsStore().write_trial(trial())
    assert os.path.isdir(tmp_path / "eqdp-results" / "trials")


def test_pandas_reads_the_trials_directory(store):
    store.write_trials([trial(study="s1", trial_id=f"t{i}", best_val_accuracy=i / 10) for i in range(3)])
    store.write_trial(trial(study="s 2/b", trial_id="x"))
    df = pd.read_parquet(store.trials_path)
    assert len(df) == 4
    assert sorted(df["study"].astype(str)) == ["s 2/b", "s1", "s1", "s1"]
    assert sorted(df["trial_id"]) == ["t0", "t1", "t2", "x"]
    assert "config.model.width" in df.columns
    hist = [{"study": "s1", "trial_id": "t0", "epoch": 1, "val_accuracy": 0.5}]
    store.write_history(hist)
    assert pd.read_parquet(store.history_path)["val_accuracy"].tolist() == [0.5]
