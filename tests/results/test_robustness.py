"""Schema evolution, corrupt/foreign files, and compaction."""

from __future__ import annotations

import math
import os
import warnings

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eqdp_ray.results import ResultsStore, SkippedFileWarning, config_from_row

from .helpers import trial


@pytest.fixture()
def store(tmp_path):
    return ResultsStore(str(tmp_path / "store"))


def _study_dir(store: ResultsStore, study: str = "s", table: str = "trials") -> str:
    return os.path.join(store.table_path(table), f"study={study}")


def _write_foreign_version(store: ResultsStore, name: str, table: pa.Table, study: str = "s") -> str:
    """A file as an older/newer eqdp-ray (or another tool) might have written it."""
    directory = _study_dir(store, study)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    pq.write_table(table, path)
    return path


def test_files_with_different_columns_are_unified(store):
    store.write_trial(trial(trial_id="new", config={"lr": 0.5, "depth": 3}, val_loss=0.25))
    # an "old version" file: fewer columns, no written_at/config_json, config.lr as int
    old = pa.table(
        {
            "study": ["s"],
            "trial_id": ["old"],
            "status": ["completed"],
            "best_val_accuracy": [0.6],
            "target_epsilon": [8.0],
            "steps": pa.array([10.0]),  # float where the canonical type is int
            "config.lr": pa.array([1], pa.int64()),
            "config.depth": ["deep"],  # str where the other file has an int
            "legacy_flag": [True],
        }
    )
    _write_foreign_version(store, "old-version.parquet", old)

    df = store.read_trials().set_index("trial_id")
    assert sorted(df.index) == ["new", "old"]
    assert df["config.lr"].dtype == "float64"  # int vs float -> float
    assert df.loc["old", "config.lr"] == 1.0 and df.loc["new", "config.lr"] == 0.5
    assert df.loc["old", "config.depth"] == "deep" and df.loc["new", "config.depth"] == "3"  # str wins
    assert df["steps"].tolist() == [1500.0, 10.0]
    assert df.loc["old", "legacy_flag"] == True  # noqa: E712 - extra column kept
    assert pd.isna(df.loc["new", "legacy_flag"])
    assert math.isnan(df.loc["old", "val_loss"]) and df.loc["new", "val_loss"] == 0.25  # missing -> null
    assert pd.isna(df.loc["old", "written_at"]) and df.loc["old", "test_accuracy"] != df.loc["old", "test_accuracy"]
    # ranking works across both versions; the old row has no config_json, columns are used
    assert store.best()["trial_id"].tolist() == ["old", "new"]
    assert config_from_row(df.loc["old"]) == {"lr": 1.0, "depth": "deep"}
    assert store.skipped_files == []


def test_int_and_float_values_of_one_config_key_across_trials(store):
    store.write_trial(trial(trial_id="i", config={"momentum": 0}))
    store.write_trial(trial(trial_id="f", config={"momentum": 0.9}))
    store.write_trials([trial(trial_id="j", config={"momentum": 1}), trial(trial_id="g", config={"momentum": 0.5})])
    df = store.read_trials().set_index("trial_id")
    assert df["config.momentum"].to_dict() == {"f": 0.9, "g": 0.5, "i": 0.0, "j": 1.0}
    assert config_from_row(df.loc["i"]) == {"momentum": 0} and isinstance(config_from_row(df.loc["i"])["momentum"], int)


def test_corrupt_file_is_warned_skipped_and_left_alone(store):
    store.write_trial(trial(trial_id="good"))
    garbage = b"this is not parquet\x00\x01\x02" * 10
    bad = os.path.join(store.trials_path, "x.parquet")
    with open(bad, "wb") as fh:
        fh.write(garbage)
    empty = os.path.join(_study_dir(store), "empty.parquet")
    open(empty, "wb").close()

    with pytest.warns(SkippedFileWarning) as record:
        df = store.read_trials()
    messages = " ".join(str(w.message) for w in record)
    assert bad in messages and empty in messages
    assert df["trial_id"].tolist() == ["good"]
    skipped = {os.path.basename(s.path): s.reason for s in store.skipped_files}
    assert set(skipped) == {"x.parquet", "empty.parquet"}
    assert "not a readable Parquet file" in skipped["x.parquet"]
    assert store.best()["trial_id"].tolist() == ["good"]
    assert store.list_studies()["n_trials"].tolist() == [1]
    with open(bad, "rb") as fh:
        assert fh.read() == garbage  # never modified
    assert os.path.exists(empty)


def test_foreign_parquet_without_key_columns_is_skipped(store):
    store.write_trial(trial(trial_id="mine"))
    foreign = _write_foreign_version(store, "foreign.parquet", pa.table({"x": [1, 2], "trial_id": ["p", "q"]}))
    with pytest.warns(SkippedFileWarning, match="study"):
        df = store.read_trials()
    assert df["trial_id"].tolist() == ["mine"]
    assert [s.path for s in store.skipped_files] == [foreign]
    assert os.path.exists(foreign)
    # a second read does not warn again, but the file stays listed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.read_trials()
    assert len(store.skipped_files) == 1


def test_temp_files_of_in_flight_writes_are_ignored(store):
    store.write_trial(trial(trial_id="t"))
    with open(os.path.join(_study_dir(store), ".half-written.parquet.tmp"), "wb") as fh:
        fh.write(b"PAR1 partial")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.read_trials()["trial_id"].tolist() == ["t"]


def test_compact_keeps_every_visible_row(store):
    for i in range(30):
        store.write_trial(trial(trial_id=f"t{i:02d}", status="running", config={"lr": i / 100, "n": i}))
    for i in range(0, 30, 3):
        store.write_trial(trial(trial_id=f"t{i:02d}", best_val_accuracy=i / 30, config={"lr": i / 100, "n": i}))
    store.write_trials([trial(study="other", trial_id=str(i)) for i in range(5)])
    store.write_history([{"study": "s", "trial_id": "t00", "epoch": e, "val_accuracy": e / 10} for e in range(4)])
    store.write_history([{"study": "s", "trial_id": "t00", "epoch": 4, "val_accuracy": 0.4}])
    bad = os.path.join(_study_dir(store), "corrupt.parquet")
    with open(bad, "wb") as fh:
        fh.write(b"garbage")

    with pytest.warns(SkippedFileWarning):
        before = store.read_trials()
    hist_before = store.read_history()
    best_before = store.best(top=None)

    results = store.compact("s")
    by_table = {r.table: r for r in results}
    assert by_table["trials"].files_merged == 40 and by_table["trials"].rows_read == 40
    assert by_table["trials"].rows_written == 30
    assert by_table["history"].files_merged == 2 and by_table["history"].rows_written == 5

    after = store.read_trials()
    pd.testing.assert_frame_equal(before, after)
    pd.testing.assert_frame_equal(hist_before, store.read_history())
    pd.testing.assert_frame_equal(best_before, store.best(top=None))
    files = sorted(os.listdir(_study_dir(store)))
    assert len(files) == 2 and "corrupt.parquet" in files  # merged file + the untouched corrupt one
    with open(bad, "rb") as fh:
        assert fh.read() == b"garbage"
    # configs survive with their types
    row = after.set_index("trial_id").loc["t03"]
    assert config_from_row(row) == {"lr": 0.03, "n": 3}
    # compacting again is a no-op; writes after compaction still supersede
    assert all(r.files_merged == 0 for r in store.compact("s"))
    store.write_trial(trial(trial_id="t01", status="failed"))
    assert store.read_trials(trial_id="t01")["status"].tolist() == ["failed"]
    assert len(store.read_trials()) == 35


def test_compact_all_studies_and_pandas_still_reads(store):
    for study in ("a", "b"):
        for i in range(5):
            store.write_trial(trial(study=study, trial_id=str(i)))
    store.compact()
    assert len(store.read_trials()) == 10
    assert len(pd.read_parquet(store.trials_path)) == 10
    for study in ("a", "b"):
        assert len(os.listdir(_study_dir(store, study))) == 1


def test_maybe_compact_only_acts_above_the_threshold(store):
    for i in range(5):
        store.write_trial(trial(trial_id=str(i)))
    assert store.maybe_compact("s", max_files=5) == []
    store.write_trial(trial(trial_id="5"))
    results = store.maybe_compact("s", max_files=5)
    assert [(r.table, r.files_merged) for r in results] == [("trials", 6)]
    assert len(os.listdir(_study_dir(store))) == 1 and len(store.read_trials()) == 6


def test_corrupt_file_among_many_is_reported(store):
    # more than 8 files: footers are read by a thread pool; the warning must still surface
    for i in range(12):
        store.write_trial(trial(trial_id=f"t{i:02d}", best_val_accuracy=i / 12))
    bad = os.path.join(_study_dir(store), "zz-bad.parquet")
    with open(bad, "wb") as fh:
        fh.write(b"PAR1" + b"\x00" * 64 + b"PAR1")  # magic bytes but no valid footer
    with pytest.warns(SkippedFileWarning, match="zz-bad.parquet"):
        top = store.best(top=1)
    assert top["trial_id"].tolist() == ["t11"]
    assert [s.path for s in store.skipped_files] == [bad]


def test_a_file_whose_store_column_has_an_unreadable_type_is_skipped_not_merged(store):
    """Text where the store writes a number or a timestamp: skipped (trials and history), never merged nor
    compacted away; a type that does read as the store's (an int metric, a text status) still counts."""
    store.write_trial(trial(trial_id="good", best_val_accuracy=0.7))
    store.write_trial(trial(trial_id="good2", best_val_accuracy=0.6))
    text_metric = _write_foreign_version(
        store, "text-metric.parquet", pa.table({"study": ["s"], "trial_id": ["x"], "best_val_accuracy": ["0.9"]})
    )
    text_time = _write_foreign_version(
        store, "text-time.parquet", pa.table({"study": ["s"], "trial_id": ["y"], "finished_at": ["yesterday"]})
    )
    castable = _write_foreign_version(
        store,
        "castable.parquet",
        pa.table({"study": ["s"], "trial_id": ["z"], "status": ["completed"], "best_val_accuracy": pa.array([1])}),
    )
    store.write_history([{"study": "s", "trial_id": "good", "epoch": 1, "val_accuracy": 0.5}])
    history_dir = _study_dir(store, table="history")
    text_history = os.path.join(history_dir, "text-history.parquet")
    pq.write_table(
        pa.table({"study": ["s"], "trial_id": ["good"], "epoch": [2], "val_accuracy": ["n/a"]}), text_history
    )

    with pytest.warns(SkippedFileWarning) as record:
        df = store.read_trials()
    assert sorted(os.path.basename(str(w.message).split(": ")[1]) for w in record) == [
        "text-metric.parquet",
        "text-time.parquet",
    ]
    assert df["trial_id"].tolist() == ["good", "good2", "z"]
    assert df["best_val_accuracy"].dtype == "float64" and df["finished_at"].dtype.kind == "M"
    assert store.best()["trial_id"].tolist() == ["z", "good", "good2"]
    reasons = {os.path.basename(s.path): s.reason for s in store.skipped_files}
    assert set(reasons) == {"text-metric.parquet", "text-time.parquet"}
    assert reasons["text-metric.parquet"].startswith("column 'best_val_accuracy' is string, not double")
    assert reasons["text-time.parquet"].startswith("column 'finished_at' is string, not timestamp[us, tz=UTC]")

    with pytest.warns(SkippedFileWarning, match="text-history.parquet"):
        history = store.read_history("s")
    assert history["epoch"].tolist() == [1] and history["val_accuracy"].dtype == "float64"

    store.compact("s")
    assert os.path.exists(text_metric) and os.path.exists(text_time) and os.path.exists(text_history)
    assert not os.path.exists(castable)  # merged into the compacted file, like any readable file
    assert store.read_trials()["trial_id"].tolist() == ["good", "good2", "z"]
