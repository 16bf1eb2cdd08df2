"""Deterministic index selection for validation splits and subsets.

Splits of private data (train / validation, the training subset) go by each example's own
public hash (`hash_split`): an example lands in the validation split iff
hash(seed, label, pixels) < fraction. Adding or removing one example therefore moves no other
example between the splits, so neighbouring data sets (add/remove one example) stay
neighbouring after the split, on exactly one side. A seeded permutation of the whole set (what
`stratified_split` does) would not: one added example reshuffles every other, and the training
sets of two neighbouring data sets would differ in many examples (docs/PRIVACY.md).

`stratified_split` and `balanced_subset` remain for public data (the fixed digits test split,
the test subset). Everything returns sorted index arrays, so a split keeps the original order.
"""

from __future__ import annotations

import hashlib
import numbers

import numpy as np

from .errors import DatasetError

__all__ = [
    "split_rate",
    "resolve_count",
    "stratified_split",
    "balanced_subset",
    "rng_for",
    "example_hashes",
    "hash_split",
]

# Separate random streams per purpose, so that e.g. changing train_subset never moves the
# validation split.
STREAM_VAL = 0
STREAM_TRAIN_SUBSET = 1
STREAM_TEST_SUBSET = 2
STREAM_FIXED_TEST = 3


def rng_for(seed: int, stream: int) -> np.random.Generator:
    """A numpy generator for ``(seed, stream)``; independent across streams."""
    return np.random.default_rng([int(seed), int(stream)])


def split_rate(size: int | float, public_n: int, what: str) -> float:
    """The hash threshold for ``size``: a fraction is its own threshold, a count is divided by
    ``public_n``, the data set's official (public) training-set size, never by the copy's own
    size, which is private: a threshold that moved with it would move other examples between
    the splits when one is added or removed. On a copy of another size a count therefore
    holds out about ``count * len(copy) / public_n`` examples.
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Real):
        raise DatasetError(f"{what} must be an int count or a float fraction, got {size!r}")
    if isinstance(size, numbers.Integral):
        if not 0 <= int(size) < public_n:
            raise DatasetError(
                f"{what}={int(size)} is out of range: it must be between 0 and {public_n - 1} "
                f"(a count is a share of the official training set's {public_n:,} examples)"
            )
        return int(size) / public_n
    if not 0.0 <= float(size) < 1.0:
        raise DatasetError(f"{what}={size} is out of range: a fraction must be in [0, 1)")
    return float(size)


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


def example_hashes(images: np.ndarray, labels: np.ndarray, seed: int, purpose: str) -> np.ndarray:
    """One public number in [0, 1) per example, a function of that example (pixels, label) and the seed only."""
    images = np.ascontiguousarray(images)
    labels = np.asarray(labels)
    key = f"eqdp-ray/{purpose}/{int(seed)}".encode()
    out = np.empty(len(labels), dtype=np.float64)
    for i in range(len(labels)):
        h = hashlib.blake2b(images[i].tobytes(), digest_size=8, key=key[:64], person=b"eqdp-split")
        h.update(int(labels[i]).to_bytes(8, "little", signed=True))
        out[i] = int.from_bytes(h.digest(), "little") / 2.0**64
    return out


def hash_split(
    images: np.ndarray, labels: np.ndarray, fraction: float, seed: int, purpose: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split into (rest, held_out): an example is held out iff its own hash is < `fraction`.

    The held-out size is random around fraction * n (binomial), the price of moving no example
    when another one is added or removed.
    """
    if not 0.0 <= fraction <= 1.0:
        raise DatasetError(f"a split fraction must lie in [0, 1], got {fraction}")
    held = example_hashes(images, labels, seed, purpose) < fraction
    return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64)
