"""benchmarks/layer_rules.py runs for real at the suite's size: one line per convolution, every route timed."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from tests.benchmarks.conftest import BENCHMARKS_DIR

ROUTES = ("summed", "formed", "deferred", "shifts", "unfold")
LINE = re.compile(r"^\s+\(.*\) -> \(.*\) kernel .*: " + r"\s+".join(rf"{r}\s+([\d.]+)" for r in ROUTES))


# ResNet-9 has no strided convolution, so every Gram goes by shifts; WRN-16-4's strided ones go by unfold
@pytest.mark.parametrize("model,k,grams", [("resnet9", 2, {"shifts"}), ("wrn16_4", 1, {"shifts", "unfold"})])
def test_layer_rules_benchmark_times_every_route_of_every_convolution(model, k, grams):
    from eqdp_ray.models import build_model

    command = [sys.executable, str(BENCHMARKS_DIR / "layer_rules.py"), "--model", model, "--k", str(k)]
    done = subprocess.run(command + ["--examples", "2", "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [m for line in done.stdout.splitlines() if (m := LINE.match(line))]
    convolutions = sum(
        isinstance(m, torch.nn.Conv2d) for m in build_model(model, in_channels=3, num_classes=10).modules()
    )
    assert len(rows) == convolutions
    assert all(float(value) > 0 for row in rows for value in row.groups())
    assert any("step takes deferred" in line for line in done.stdout.splitlines())
    assert set(re.findall(r"Gram by (\w+)", done.stdout)) == grams


STEERABLE_ROUTES = ("summed", "rule", "grouped", "unfold", "loop", "shifted", "canvas")
STEERABLE_LINE = re.compile(
    r"^\s+\(.*\) -> \(.*\) kernel \d+ stride (\d+): "
    + r"\s+".join(rf"{r}\s+([\d.]+)" for r in STEERABLE_ROUTES[:5])
    + r"(?:\s+shifted\s+([\d.]+)\s+canvas\s+([\d.]+))?"
    + r"\s+strategy (dense|orbit|symmetry), filter route ([a-z,]+)$"
)


def test_layer_rules_benchmark_times_every_route_of_every_steerable_convolution():
    """The equivariant model: every steerable convolution timed by the summed gradient, our rule and each route."""
    from eqdp_ray.models import build_model
    from eqdp_ray.models.layers import SteerableConv2d

    command = [sys.executable, str(BENCHMARKS_DIR / "layer_rules.py"), "--model", "eq_resnet9", "--k", "2"]
    done = subprocess.run(command + ["--examples", "2", "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [m for line in done.stdout.splitlines() if (m := STEERABLE_LINE.match(line))]
    options = {"group": "dihedral", "order": 4, "layout": (16, 32, 64), "restrict": 2}  # benchmarks/dp_step.py's
    layers = build_model("eq_resnet9", in_channels=3, num_classes=10, **options).modules()
    assert len(rows) == sum(isinstance(m, SteerableConv2d) for m in layers)
    for row in rows:
        stride, times, routes = row.group(1), row.groups()[1:8], row.group(10)
        assert all(float(t) > 0 for t in times if t is not None)
        assert (times[5] is not None) == (stride == "1")  # the canvas routes: size-keeping layers only
        assert set(routes.split(",")) <= set(STEERABLE_ROUTES[2:])
    assert {row.group(9) for row in rows} <= {"dense", "orbit", "symmetry"}  # one strategy per call
