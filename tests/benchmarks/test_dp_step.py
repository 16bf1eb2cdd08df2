"""benchmarks/dp_step.py runs for real at the suite's size and prints every variant and ratio it promises."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from tests.benchmarks.conftest import BENCHMARKS_DIR

VARIANT = re.compile(r"^\s+(\w+):\s+([\d.]+) s\s+peak \+\s*([\d.]+) MiB$")
RATIO = re.compile(r"^\s+([\w/]+) =\s+([\d.]+)\s+target (<=|>=) ([\d.]+)\s+(met|NOT met)")


def run_benchmark(model: str) -> str:
    command = [sys.executable, str(BENCHMARKS_DIR / "dp_step.py"), "--model", model, "--examples", "2"]
    done = subprocess.run(command + ["--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def assert_ratio_of(value: float, num: float, den: float) -> None:
    """`value` is num / den as printed: times to the millisecond (a few ms at this size), ratios to 0.01."""
    low, high = (num - 5e-4) / (den + 5e-4), (num + 5e-4) / max(den - 5e-4, 1e-9)
    assert low - 0.006 <= value <= high + 0.006, (value, num, den)


@pytest.mark.parametrize(
    "model,variants,ratios",
    [
        (
            "resnet9",
            {"a", "a4", "b", "d", "bf", "df", "o", "o4", "O", "O4"},
            {"b/a", "d/a4", "o/b", "o4/d", "O/b", "O4/d"},
        ),
        ("eq_resnet9", {"a", "a4", "b", "d", "bf", "df", "c", "e"}, {"b/a", "d/a4", "c/b", "e/d"}),
    ],
)
def test_dp_step_benchmark_prints_each_variant_and_ratio(model, variants, ratios):
    lines = run_benchmark(model).splitlines()
    timed = {m[1]: (float(m[2]), float(m[3])) for line in lines if (m := VARIANT.match(line))}
    assert set(timed) == variants
    assert all(seconds > 0 and math.isfinite(seconds) for seconds, _ in timed.values())
    printed = {m[1]: float(m[2]) for line in lines if (m := RATIO.match(line))}
    assert set(printed) == ratios
    for label, value in printed.items():  # each ratio is the two variants' times, not a constant
        assert_ratio_of(value, *(timed[name][0] for name in label.split("/")))
    for fixed, ours in (("bf", "b"), ("df", "d")):  # the gain of timing the filter-gradient routes
        (line,) = [line for line in lines if line.strip().startswith(f"{fixed}/{ours} =")]
        assert_ratio_of(float(line.split("=")[1].split()[0]), timed[fixed][0], timed[ours][0])
    assert any(line.startswith("filter-gradient routes chosen after") for line in lines)
    leads = [line for line in lines if RATIO.match(line) and ">=" in line]
    assert leads and all("ceiling" in line for line in leads)
    if model == "eq_resnet9":
        assert any(line.startswith("Opacus hooks: refused") for line in lines)
