"""Load the GPU-call scripts (benchmarks/gpu/, not a package) as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

GPU_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"


def _load(name: str):
    if str(GPU_DIR) not in sys.path:
        sys.path.insert(0, str(GPU_DIR))
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", GPU_DIR / f"{name}.py")
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
