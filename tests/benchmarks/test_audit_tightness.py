"""benchmarks/audit_tightness.py for real at its smallest: one honest row and one fault row of its table.

Each row is a real one-step audit of the tiny D4 model on about 200 digits (tests/audit's setting).
"""

from __future__ import annotations

import math

import pytest

from .conftest import BENCHMARKS_DIR, _load

HONEST, FAULTY = "q=1 T=1 eps=1.0", "q=1 T=1 eps=1 no_noise"
HEADER = "| setting | M | claimed eps | lower bound (95%) | guesses right | score | seconds |"


@pytest.fixture(scope="module")
def audit_bench():
    return _load("audit_tightness", BENCHMARKS_DIR, prefix="benchmarks")


def table_rows(out: str) -> dict[str, dict[str, float | int | str]]:
    lines = out.splitlines()
    assert lines[:2] == [HEADER, "|---|---|---|---|---|---|---|"]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 7, line
        name, m, claimed, bound, guesses, score, seconds = cells
        right, made = (int(v) for v in guesses.split("/"))
        rows[name] = {
            "M": int(m),
            "claimed": float(claimed),
            "bound": float(bound),
            "right": right,
            "made": made,
            "score": score,  # the name of the score that won
            "seconds": int(seconds),
        }
    return rows


def test_the_table_bounds_the_honest_run_by_its_claim_and_exposes_the_fault(audit_bench, capsys):
    audit_bench.main(["--canaries", "800", "--only", HONEST, FAULTY])
    rows = table_rows(capsys.readouterr().out)
    assert list(rows) == [HONEST, FAULTY]
    for row in rows.values():
        assert row["M"] == 800 and 0 <= row["right"] <= row["made"] <= 800
        assert all(math.isfinite(row[k]) for k in ("claimed", "bound")) and row["score"] and row["seconds"] >= 0
        assert 0 < row["claimed"] <= 1.0  # the epsilon spent, within the target of 1
    honest, faulty = rows[HONEST], rows[FAULTY]
    assert 0 <= honest["bound"] <= honest["claimed"]
    assert faulty["bound"] > faulty["claimed"]  # without noise the audit catches the claim out
    assert faulty["right"] > 0.8 * faulty["made"] > 0  # and it guessed mostly right


def test_an_unknown_row_is_refused_with_the_names_there_are(audit_bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        audit_bench.main(["--only", "q=1 T=1 eps=2.0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no row ['q=1 T=1 eps=2.0'] in --settings tests" in err and HONEST in err and FAULTY in err
