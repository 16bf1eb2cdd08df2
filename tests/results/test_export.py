"""Text/JSON/CSV rendering used by the CLI."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from eqdp_ray.results import ResultsStore, ResultsStoreError, export, format_table

from .helpers import trial


@pytest.fixture()
def top(tmp_path):
    store = ResultsStore(str(tmp_path))
    store.write_trial(trial(trial_id="short", best_val_accuracy=0.9123456, config={"lr": 1e-4}))
    store.write_trial(trial(trial_id="a-much-longer-trial-id", best_val_accuracy=0.5, epsilon=None))
    return store.best()


def test_format_table_aligns_columns(top):
    text = format_table(top, ["rank", "trial_id", "best_val_accuracy", "epsilon", "config.lr", "finished_at"])
    lines = text.splitlines()
    assert len(lines) == 4
    header, rule, first, second = lines
    assert header.split() == ["rank", "trial_id", "best_val_accuracy", "epsilon", "config.lr", "finished_at"]
    assert set(rule.replace(" ", "")) == {"-"}
    # every column starts at the same offset on every line
    starts = [i for i, ch in enumerate(rule) if ch == "-" and (i == 0 or rule[i - 1] == " ")]
    for line in (header, first, second):
        for s in starts[1:]:
            assert line[s - 1] == " "
    assert "0.9123" in first and "1.000e-04" in first and "2024-05-01 12:05:00" in first
    assert second.split()[3] == "-"  # missing epsilon
    # numbers are right-aligned: both accuracy cells end at the same column
    assert first.index("0.9123") + 6 == second.index("0.5000") + 6


def test_format_table_rejects_unknown_columns_and_truncates(top):
    with pytest.raises(ResultsStoreError, match="available"):
        format_table(top, ["nope"])
    text = format_table(top, ["config_json"], max_width=12)
    assert all(len(line) <= 12 for line in text.splitlines())
    assert "..." in text


def test_json_and_csv_exports(top):
    records = json.loads(export(top, "json", ["trial_id", "best_val_accuracy", "epsilon", "finished_at"]))
    assert records[0]["trial_id"] == "short" and records[1]["epsilon"] is None
    assert records[0]["finished_at"].startswith("2024-05-01T12:05:00")
    back = pd.read_csv(io.StringIO(export(top, "csv", ["trial_id", "best_val_accuracy"])))
    assert back["trial_id"].tolist() == ["short", "a-much-longer-trial-id"]
    with pytest.raises(ResultsStoreError, match="table, json, csv"):
        export(top, "xml")


def test_format_table_rounds_epsilons_up():
    """Epsilon columns used to print with 4 decimals rounded to nearest: 2.45932 read 2.4593, below what was spent."""
    df = pd.DataFrame({"epsilon": [2.45932, 7.999999999], "target_epsilon": [8.0, 0.12341], "val": [2.45932, 0.5]})
    rows = [line.split() for line in format_table(df).splitlines()[2:]]
    assert rows == [["2.46", "8", "2.4593"], ["8", "0.1235", "0.5000"]]


def test_json_writes_epsilons_exactly_never_rounded_down():
    """pandas' JSON encoder rounded to 10 decimals, to nearest: an epsilon spent of 1.00000000004 read 1.0."""
    df = pd.DataFrame({"epsilon": [1.00000000004, 7.12345678914, float("nan")], "search_epsilon": [4e-11, 8.0, 2.5]})
    records = json.loads(export(df, "json"))
    assert [r["epsilon"] for r in records] == [1.00000000004, 7.12345678914, None]
    assert [r["search_epsilon"] for r in records] == [4e-11, 8.0, 2.5]
