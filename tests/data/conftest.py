"""Fixtures for the data-layer tests: where the real offline data lives."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"offline data not available at {path}")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def cifar10_bin_dir() -> Path:
    return _need(SHARED_DATA / "cifar-10-batches-bin")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return _need(SHARED_DATA / "mnist")


@pytest.fixture
def quiet_test_only():
    """Silence the expected 'only the MNIST test set' warning where it is not the subject."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="only the MNIST test set")
        yield
