"""The store's ledger table: append-only events, read back in write order, bad rows refused whole."""

import datetime as dt

import pytest

from eqdp_ray.results import ResultsStore
from eqdp_ray.results.errors import ResultsStoreError


def event(trial, attempt, kind, steps, **extra):
    row = {
        "study": "s",
        "trial_id": trial,
        "attempt": attempt,
        "event": kind,
        "noise_multiplier": 2.0,
        "sample_rate": 0.1,
        "steps": steps,
        "score_noise": 5.0,
        "score_releases": 2,
        "timestamp": dt.datetime.now(dt.timezone.utc),
    }
    row.update(extra)
    return row


def test_ledger_round_trip_keeps_every_event_in_order(tmp_path):
    store = ResultsStore(tmp_path)
    assert store.read_ledger("s").empty
    store.write_ledger([event("a", 1, "reserve", 100)])
    store.write_ledger([event("b", 1, "reserve", 100)])
    store.write_ledger([event("a", 1, "settle", 40)])
    got = store.read_ledger("s")
    assert list(zip(got["trial_id"], got["event"], got["steps"])) == [
        ("a", "reserve", 100),
        ("b", "reserve", 100),
        ("a", "settle", 40),
    ]


@pytest.mark.parametrize(
    "change,pattern",
    [
        ({"event": "spend"}, "ledger event"),
        ({"noise_multiplier": None}, "needs .noise_multiplier."),
        ({"colour": 1}, "unknown ledger"),
    ],
)
def test_bad_ledger_rows_are_refused_and_nothing_is_written(tmp_path, change, pattern):
    store = ResultsStore(tmp_path)
    with pytest.raises(ResultsStoreError, match=pattern):
        store.write_ledger([event("a", 1, "reserve", 100), event("b", 1, "reserve", 100, **change)])
    assert store.read_ledger("s").empty
