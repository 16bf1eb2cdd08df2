"""benchmarks/store.py for real at a tiny size: the store it writes, and the figures and ranking it prints."""

from __future__ import annotations

import math
import random
import re

import pyarrow.parquet as pq
import pytest

from eqdp_ray.results import ResultsStore

from .conftest import BENCHMARKS_DIR, _load

ROWS, STUDIES, BATCH, SEED = 240, 2, 60, 5
MEDIAN = re.compile(
    r"^\[(?P<label>[^\]]+)\] best\(top=5\): median (?P<s>\S+) s over 2 runs -> under 1 s target: (?P<ok>yes|NO)$"
)
OTHERS = re.compile(
    r"^\[(?P<label>[^\]]+)\] best\(epsilon=8\.0, top=5\): median (?P<eps>\S+) s; list_studies: median (?P<ls>\S+) s$"
)
WROTE = re.compile(r"^generated 240 rows in \S+ s; wrote (?P<files>\d+) files in \S+ s \((?P<rate>[\d,]+) rows/s\)$")
TOP_ROW = re.compile(
    r"^\s*(?P<rank>\d+)\s+(?P<study>bench-\d)\s+(?P<trial>trial_\d{7})\s+(?P<status>\S+)\s+\S+\s+(?P<acc>\S+)$"
)


@pytest.fixture(scope="module")
def store_bench():
    return _load("store", BENCHMARKS_DIR, prefix="benchmarks")


def expected_top5(store_bench) -> list[str]:
    """The five best rankable trials, worked out from the generator alone (not from the store)."""
    rng = random.Random(SEED)
    rows = [store_bench.make_row(i, f"bench-{i % STUDIES}", rng) for i in range(ROWS)]
    ranked = [r for r in rows if r["status"] in ("completed", "stopped_early")]
    ranked.sort(key=lambda r: r["best_val_accuracy"], reverse=True)
    return [r["trial_id"] for r in ranked[:5]]


def test_store_benchmark_writes_every_row_and_ranks_them_before_and_after_compaction(store_bench, tmp_path, capsys):
    uri = str(tmp_path / "store")
    argv = ["--rows", str(ROWS), "--studies", str(STUDIES), "--batch", str(BATCH), "--repeats", "2"]
    code = store_bench.main(argv + ["--seed", str(SEED), "--store", uri, "--compact"])
    lines = capsys.readouterr().out.splitlines()

    wrote = [m for line in lines if (m := WROTE.match(line))]
    assert len(wrote) == 1 and int(wrote[0]["files"]) == STUDIES * (ROWS // BATCH)  # a file per batch and study
    medians = [m for line in lines if (m := MEDIAN.match(line))]
    others = [m for line in lines if (m := OTHERS.match(line))]
    assert (
        [m["label"] for m in medians]
        == [f"{STUDIES * ROWS // BATCH} files", "compacted"]
        == [m["label"] for m in others]
    )
    for m in medians:
        seconds = float(m["s"])
        assert math.isfinite(seconds) and seconds >= 0 and (m["ok"] == "yes") == (seconds < 1.0)
    for m in others:
        assert all(math.isfinite(float(m[k])) and float(m[k]) >= 0 for k in ("eps", "ls"))
    # the exit status is the verdict printed on the last measurement
    assert code == (0 if medians[-1]["ok"] == "yes" else 1)

    tops = [m for line in lines if (m := TOP_ROW.match(line))]
    assert len(tops) == 10  # two tables of five
    expected = expected_top5(store_bench)
    for table in (tops[:5], tops[5:]):
        assert [int(m["rank"]) for m in table] == [1, 2, 3, 4, 5]
        assert [m["trial"] for m in table] == expected
        assert all(m["status"] in ("completed", "stopped_early") for m in table)

    # the store left behind is valid Parquet, compacted to one file per study, with every row once
    store = ResultsStore(uri)
    assert store.studies() == ["bench-0", "bench-1"]
    files = store.list_files()
    assert len(files) == STUDIES and all(pq.read_metadata(f).num_rows == ROWS // STUDIES for f in files)
    trials = store.read_trials(columns=["trial_id"])
    assert len(trials) == ROWS and trials["trial_id"].nunique() == ROWS


def test_store_benchmark_refuses_a_non_empty_store(store_bench, tmp_path, capsys):
    uri = str(tmp_path / "store")
    assert store_bench.main(["--rows", "10", "--batch", "10", "--repeats", "1", "--store", uri]) in (0, 1)
    before = sorted(ResultsStore(uri).list_files())
    capsys.readouterr()
    assert store_bench.main(["--rows", "10", "--batch", "10", "--repeats", "1", "--store", uri]) == 2
    assert "refusing to write into non-empty store" in capsys.readouterr().err
    assert sorted(ResultsStore(uri).list_files()) == before and len(ResultsStore(uri).read_trials()) == 10
