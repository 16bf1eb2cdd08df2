"""Validation carving and subsets: sizes, neighbouring data sets, determinism, argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eqdp_ray.data import DatasetError, load_dataset
from eqdp_ray.data.splits import balanced_subset, hash_split, resolve_count, rng_for, stratified_split


def _key(ds):
    return ds.train_x.flatten(1).sum(1), ds.val_x.flatten(1).sum(1)


def test_val_size_int_and_float():
    """A count or a fraction sets the expected size; the realised one is binomial around it."""
    full = load_dataset("digits", val_size=0)
    n = len(full.train_y)
    by_count = load_dataset("digits", val_size=100)
    assert len(by_count.train_y) + len(by_count.val_y) == n
    assert abs(len(by_count.val_y) - 100) < 4 * (100 * (1 - 100 / n)) ** 0.5
    by_frac = load_dataset("digits", val_size=0.25)
    assert abs(len(by_frac.val_y) - 0.25 * n) < 4 * (0.25 * 0.75 * n) ** 0.5
    assert len(by_frac.train_y) + len(by_frac.val_y) == n


def _rows(x):
    return {bytes(r) for r in x.reshape(len(x), -1)}


def test_adding_or_removing_one_example_moves_no_other_between_the_splits():
    """The neighbouring relation survives the split: D and D + {z} split into (T, V) and (T + {z}, V) or (T, V + {z})."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(400, 3, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=400)
    train, val = hash_split(images, labels, 0.2, seed=7, purpose="val")
    for extra in range(20):
        z = rng.integers(0, 256, size=(1, 3, 4, 4), dtype=np.uint8)
        big_images, big_labels = np.concatenate([images[:100], z, images[100:]]), np.insert(labels, 100, extra % 10)
        t2, v2 = hash_split(big_images, big_labels, 0.2, seed=7, purpose="val")
        moved_train = _rows(big_images[t2]) ^ _rows(images[train])
        moved_val = _rows(big_images[v2]) ^ _rows(images[val])
        assert len(moved_train) + len(moved_val) == 1  # only z, on exactly one side
        assert _rows(z) == (moved_train or moved_val)
    removed = np.delete(np.arange(400), 37)
    t3, v3 = hash_split(images[removed], labels[removed], 0.2, seed=7, purpose="val")
    assert (
        len(_rows(images[removed][t3]) ^ _rows(images[train])) + len(_rows(images[removed][v3]) ^ _rows(images[val]))
        == 1
    )


def test_a_permutation_split_would_break_the_neighbouring_relation():
    """Why hash_split exists: the seeded stratified permutation reshuffles when one example is added."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=400)
    _, held = stratified_split(labels, 80, rng_for(0, 0))
    _, held2 = stratified_split(np.insert(labels, 0, 0), 80, rng_for(0, 0))
    moved = set(held.tolist()) ^ set((held2 - 1).tolist())  # in original indices; -1 is the new example
    assert len(moved - {-1}) > 5  # many other examples changed sides


def test_split_is_deterministic_given_seed_and_changes_with_it():
    a, b, c = (load_dataset("digits", seed=s) for s in (5, 5, 6))
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.val_x, c.val_x)


def test_train_and_val_partition_the_training_part():
    ds = load_dataset("digits", val_size=0.2, seed=3)
    full = load_dataset("digits", val_size=0)
    ours = torch.cat([ds.train_x, ds.val_x]).flatten(1)
    ref = full.train_x.flatten(1)
    assert sorted(map(bytes, ours.numpy())) == sorted(map(bytes, ref.numpy()))


def test_stratified_split_preserves_proportions_and_sums_exactly():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    rest, held = stratified_split(labels, 40, rng_for(0, 0))
    assert len(held) == 40 and len(rest) == 160
    assert np.bincount(labels[held]).tolist() == [20, 10, 6, 4]
    assert np.intersect1d(rest, held).size == 0
    assert np.all(np.diff(held) > 0)  # sorted: original order is kept


def test_balanced_subset_equalises_and_caps():
    labels = np.repeat(np.arange(3), [100, 5, 100])
    idx = balanced_subset(labels, 30, rng_for(0, 1), "train_subset")
    assert np.bincount(labels[idx]).tolist() == [13, 5, 12]  # class 1 capped, rest shared out
    assert len(np.unique(idx)) == 30


def test_train_and_test_subsets_are_seeded_and_the_test_subset_balanced():
    ds = load_dataset("digits", train_subset=50, test_subset=30, seed=1)
    assert 25 < len(ds.train_y) < 75  # by hash, binomial around 50
    assert torch.bincount(ds.test_y, minlength=10).tolist() == [3] * 10
    again = load_dataset("digits", train_subset=50, test_subset=30, seed=1)
    assert torch.equal(ds.train_x, again.train_x) and torch.equal(ds.test_x, again.test_x)
    # The subset is drawn after val is carved and does not move it.
    no_subset = load_dataset("digits", seed=1)
    assert torch.equal(ds.val_x, no_subset.val_x)


def test_real_cifar_subsets(shared_data):
    ds = load_dataset("cifar10", shared_data, train_subset=1_000, test_subset=500, seed=0)
    assert ds.train_x.shape[1:] == (3, 32, 32) and abs(len(ds.train_y) - 1_000) < 130
    assert torch.bincount(ds.train_y, minlength=10).min() > 60
    assert torch.bincount(ds.test_y, minlength=10).tolist() == [50] * 10
    assert abs(len(ds.val_y) - 5_000) < 300


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"val_size": 1.0}, "val_size=1.0 is out of range"),
        ({"val_size": -0.1}, "val_size=-0.1 is out of range"),
        ({"val_size": 10_000}, "val_size=10000 is out of range"),
        ({"val_size": "10%"}, "val_size must be"),
        ({"val_size": True}, "val_size must be"),
        ({"train_subset": 100_000}, "train_subset=100000 is out of range"),
        ({"test_subset": 100_000}, "test_subset=100000 is out of range"),
        ({"train_subset": 0}, "train_subset must be a positive int"),
        ({"test_subset": 2.5}, "test_subset must be a positive int"),
        ({"seed": -1}, "seed must be"),
    ],
)
def test_bad_arguments_raise_dataset_error(kwargs, pattern):
    with pytest.raises(DatasetError, match=pattern):
        load_dataset("digits", **kwargs)


def test_resolve_count_rounds_fractions():
    assert resolve_count(0.1, 1_437, "val_size") == 144
    assert resolve_count(0, 10, "val_size") == 0
    assert resolve_count(np.int64(3), 10, "val_size") == 3
