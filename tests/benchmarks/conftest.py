"""Load the benchmark scripts (benchmarks/ and benchmarks/gpu/, not packages) as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
GPU_DIR = BENCHMARKS_DIR / "gpu"


def _load(name: str, directory: Path = GPU_DIR, prefix: str = "gpu"):
    if directory == GPU_DIR and str(GPU_DIR) not in sys.path:  # the GPU scripts import each other by name
        sys.path.insert(0, str(GPU_DIR))
    spec = importlib.util.spec_from_file_location(f"{prefix}_{name}", directory / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def build():
    return _load("build")


@pytest.fixture(scope="session")
def datapack():
    return _load("datapack")


@pytest.fixture(scope="session")
def driver():
    return _load("driver")


@pytest.fixture(scope="session")
def reproduce():
    return _load("reproduce", BENCHMARKS_DIR, prefix="benchmarks")
