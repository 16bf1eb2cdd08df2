"""Deterministic, class-aware index selection for validation splits and subsets.

Everything here works on label arrays and returns sorted index arrays, so a split keeps the
original order of the images and depends only on the labels and the seed.
"""

from __future__ import annotations

import numbers

import numpy as np

from .errors import DatasetError

__all__ = ["resolve_count", "stratified_split", "balanced_subset", "rng_for"]

# Separate random streams per purpose, so that e.g. changing train_subset never moves the
# validation split.
STREAM_VAL = 0
STREAM_TRAIN_SUBSET = 1
STREAM_TEST_SUBSET = 2
STREAM_FIXED_TEST = 3


def rng_for(seed: int, stream: int) -> np.random.Generator:
    """A numpy generator for ``(seed, stream)``; independent across streams."""
    return np.random.default_rng([int(seed), int(stream)])


def resolve_count(size: int | float, n: int, what: str) -> int:
    """Turn an int count or a float fraction of ``n`` into a count in ``[0, n)``.

    At least one example must remain on the other side, otherwise training gets no data.
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Real):
        raise DatasetError(f"{what} must be an int count or a float fraction, got {size!r}")
    if isinstance(size, numbers.Integral):
        k = int(size)
        if not 0 <= k < n:
            raise DatasetError(
                f"{what}={k} is out of range: it must be between 0 and {n - 1} (the training data has {n} examples)"
            )
        return k
    f = float(size)
    if not 0.0 <= f < 1.0:
        raise DatasetError(f"{what}={size} is out of range: a fraction must be in [0, 1)")
    k = int(round(f * n))
    if k >= n:
        raise DatasetError(f"{what}={size} leaves no training data out of {n} examples")
    return k


def _proportional(counts: np.ndarray, k: int) -> np.ndarray:
    """Largest-remainder allocation of ``k`` in proportion to ``counts`` (sums exactly to k)."""
    total = counts.sum()
    exact = counts * (k / total)
    alloc = np.floor(exact).astype(np.int64)
    rest = k - alloc.sum()
    if rest:
        order = np.argsort(-(exact - alloc), kind="stable")
        alloc[order[:rest]] += 1
    return np.minimum(alloc, counts)


def _equal(counts: np.ndarray, k: int) -> np.ndarray:
    """Allocate ``k`` as evenly as possible across classes, capped by each class's size."""
    alloc = np.zeros_like(counts)
    left = k
    while left > 0:
        open_ = np.flatnonzero(alloc < counts)
        share, extra = divmod(left, len(open_))
        add = np.full(len(open_), share, dtype=np.int64)
        add[:extra] += 1  # lowest class ids get the remainder, deterministically
        add = np.minimum(add, counts[open_] - alloc[open_])
        alloc[open_] += add
        left -= int(add.sum())
    return alloc


def _pick(labels: np.ndarray, alloc: np.ndarray, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    chosen = []
    for c, k in zip(classes, alloc):
        if k:
            idx = np.flatnonzero(labels == c)
            chosen.append(rng.permutation(idx)[:k])
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_split(labels: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held_out) with ``k`` held out, class proportions preserved."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    held = _pick(labels, _proportional(counts, k), classes, rng)
    mask = np.ones(len(labels), dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask).astype(np.int64), held


def balanced_subset(labels: np.ndarray, k: int, rng: np.random.Generator, what: str) -> np.ndarray:
    """``k`` indices with as equal a number per class as the data allow."""
    labels = np.asarray(labels)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise DatasetError(f"{what} must be an int count, got {k!r}")
    if not 1 <= k <= len(labels):
        raise DatasetError(
            f"{what}={k} is out of range: it must be between 1 and {len(labels)} (the number of examples available)"
        )
    classes, counts = np.unique(labels, return_counts=True)
    return _pick(labels, _equal(counts.astype(np.int64), int(k)), classes, rng)
