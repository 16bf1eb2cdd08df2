"""MNIST IDX parsing on the real test files, the test-set-only fallback, and rotated MNIST."""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest
import torch

from eqdp_ray.data import DatasetError, load_dataset
from eqdp_ray.data.mnist import TEST_ONLY_TEST_FRACTION, read_idx, rotate_images, rotation_angles, split_test_only_copy

from .formats import idx_bytes, write_mnist

OFFICIAL_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def real_test_set(mnist_dir):
    x = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    y = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    return x, y


def test_real_idx_files_parse(real_test_set):
    x, y = real_test_set
    assert x.shape == (10_000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10_000,)
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(y, minlength=10).tolist() == OFFICIAL_TEST_COUNTS
    # Real digits: dark background, bright strokes, about 19% ink.
    assert x[:, 0, :].max() == 0 and x.max() == 255
    assert 0.12 < x.mean() / 255 < 0.15


def test_idx_plain_and_gzip_agree(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)


def test_idx_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    good = idx_bytes(np.zeros((4, 5), np.uint8))
    (tmp_path / "short").write_bytes(good[:-3])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "short")


def test_test_only_copy_warns_and_splits_deterministically(shared_data, real_test_set):
    x, y = real_test_set
    with pytest.warns(UserWarning, match="only the MNIST test set"):
        ds = load_dataset("mnist", shared_data)
    # The official 10,000 split by each digit's hash: 2,020 test (Binomial(10,000, 0.2), std 40),
    # and val ~ Binomial(7,980, 0.1), std 27.
    pool_size = len(ds.train_y) + len(ds.val_y)
    assert pool_size + len(ds.test_y) == 10_000 and abs(len(ds.test_y) - 2_000) < 5 * 40
    assert abs(len(ds.val_y) - 0.1 * pool_size) < 5 * 27
    assert (ds.in_channels, ds.image_size, ds.num_classes, ds.hflip) == (1, 28, 10, False)
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)
    # Documented rule: a digit is test iff its own hash is below the fraction; the rest is the pool.
    is_test = np.zeros(10_000, bool)
    is_test[split_test_only_copy(torch.from_numpy(x[:, None]), torch.from_numpy(y.astype(np.int64)))[1]] = True
    assert np.array_equal(ds.test_x[:, 0].numpy(), x[is_test])
    assert np.array_equal(ds.test_y.numpy(), y[is_test])
    pool = np.concatenate([ds.train_y.numpy(), ds.val_y.numpy()])
    assert np.array_equal(np.bincount(pool, minlength=10), np.bincount(y[~is_test], minlength=10))
    # both halves of the official file (the first 5,000 digits are cleaner) reach the test part
    assert abs(is_test[:5_000].sum() - is_test[5_000:].sum()) < 5 * 40


def _records(x: torch.Tensor, y: torch.Tensor) -> set[bytes]:
    return {xi.numpy().tobytes() + bytes([int(yi)]) for xi, yi in zip(x, y)}


def test_test_only_copy_splits_each_digit_by_itself(tmp_path, quiet_test_only):
    """Adding or removing one digit must move no other between the training pool and the test part.

    The old rule (index % 5 == 4 is test) moved about a fifth of the digits after the removed one.
    """
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(501, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=501).astype(np.uint8)
    copies = {"D": (x[1:], y[1:]), "D+z": (x, y), "D-w": (np.delete(x[1:], 100, 0), np.delete(y[1:], 100, 0))}
    for name, (xs, ys) in copies.items():
        d = tmp_path / name / "mnist"
        d.mkdir(parents=True)
        (d / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(xs))
        (d / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(ys))
    for dataset in ("mnist", "rotated_mnist"):
        parts = {}
        for name in copies:
            ds = load_dataset(dataset, tmp_path / name, val_size=0)
            parts[name] = (_records(ds.train_x, ds.train_y), _records(ds.test_x, ds.test_y))
        (t, e), (tz, ez), (tw, ew) = parts["D"], parts["D+z"], parts["D-w"]
        assert len(t) + len(e) == 500 and len(tz) + len(ez) == 501 and len(tw) + len(ew) == 499
        # z joins exactly one side and w leaves exactly one; every other digit stays where it was
        assert t <= tz and e <= ez and len(tz - t) + len(ez - e) == 1, dataset
        assert tw <= t and ew <= e and len(t - tw) + len(e - ew) == 1, dataset
    share = len(parts["D"][1]) / 500
    assert abs(share - TEST_ONLY_TEST_FRACTION) < 5 * 0.018  # Binomial(500, 0.2): std 0.018


def test_root_may_be_the_mnist_folder(mnist_dir, quiet_test_only):
    ds = load_dataset("mnist", mnist_dir, val_size=0)
    assert len(ds.train_y) == 7_980  # the official file's training pool (see above)


def test_full_copy_loads_without_warning(tmp_path):
    written = write_mnist(tmp_path / "mnist", n_train=40, n_test=20, gz=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset("mnist", tmp_path, val_size=15_000)
    # A count is a share of the official 60,000: val_size=15,000 is a hash split at rate 1/4 on
    # any copy. The sizes add up, the test set is untouched.
    assert len(ds.train_y) + len(ds.val_y) == 40 and len(ds.test_y) == 20
    assert 0 < len(ds.val_y) < 40
    assert np.array_equal(ds.test_x[:, 0].numpy(), written["t10k"][0])


def test_missing_mnist_message(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("rotated_mnist", tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "t10k-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert "data.download=true" in msg


def test_rotate_by_0_and_90_degrees_is_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 1, 28, 28), generator=g, dtype=torch.uint8)
    assert torch.equal(rotate_images(x, np.zeros(6)), x)
    # positive angles turn the picture counter-clockwise, like torch.rot90(k=1) on (H, W)
    assert torch.equal(rotate_images(x, np.full(6, 90.0)), torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(rotate_images(x, np.full(6, 180.0)), torch.rot90(x, 2, dims=(2, 3)))


def test_rotate_keeps_ink_inside_the_frame():
    x = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    x[0, 0, 10:18, 10:18] = 200  # centred square: any rotation keeps it inside 28x28
    y = rotate_images(x, [37.0])
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert not torch.equal(x, y)
    assert abs(y.float().sum() / x.float().sum() - 1) < 0.02


@pytest.fixture(scope="module")
def rotated_pair(shared_data):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="only the MNIST test set")
        plain = load_dataset("mnist", shared_data, val_size=0.1, seed=1)
        rot = load_dataset("rotated_mnist", shared_data, val_size=0.1, seed=1)
        rot_other_split = load_dataset("rotated_mnist", shared_data, val_size=0.1, seed=2)
    return plain, rot, rot_other_split


def test_rotated_mnist_is_rotated_and_labels_unchanged(rotated_pair):
    plain, rot, _ = rotated_pair
    # The split hashes each (rotated) image, so the two splits differ; the pools and tests do not.
    assert len(rot.train_y) + len(rot.val_y) == len(plain.train_y) + len(plain.val_y) == 7_980
    assert rot.train_x.shape[1:] == (1, 28, 28) and rot.train_x.dtype == torch.uint8
    pool = lambda d: torch.bincount(torch.cat([d.train_y, d.val_y]), minlength=10)  # noqa: E731
    assert torch.equal(pool(rot), pool(plain)) and torch.equal(rot.test_y, plain.test_y)
    differs = (rot.test_x != plain.test_x).flatten(1).any(1)
    assert differs.float().mean() > 0.99  # the test digits are rotated
    rotated_pool = torch.cat([rot.train_x, rot.val_x]).flatten(1)
    plain_pool = torch.cat([plain.train_x, plain.val_x]).flatten(1)
    assert not (rotated_pool.sum(1).sort().values == plain_pool.sum(1).sort().values).all()  # and the train digits
    # Bilinear resampling roughly preserves ink; a broken rotation would not.
    ratio = rot.test_x.float().sum() / plain.test_x.float().sum()
    assert 0.9 < ratio < 1.05


def test_rotated_mnist_is_deterministic_and_independent_of_split_seed(shared_data, rotated_pair):
    _, rot, rot_other_split = rotated_pair
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="only the MNIST test set")
        again = load_dataset("rotated_mnist", shared_data, val_size=0.1, seed=1)
    assert torch.equal(again.train_x, rot.train_x) and torch.equal(again.val_x, rot.val_x)
    # Another split seed regroups the same rotated images: the test part is identical and
    # the train + val pool holds the same images.
    assert torch.equal(rot_other_split.test_x, rot.test_x)
    assert not torch.equal(rot_other_split.val_y, rot.val_y) or not torch.equal(rot_other_split.val_x, rot.val_x)
    pool_a = torch.cat([rot.train_x, rot.val_x]).flatten(1).sum(1).sort().values
    pool_b = torch.cat([rot_other_split.train_x, rot_other_split.val_x]).flatten(1).sum(1).sort().values
    assert torch.equal(pool_a, pool_b)


def test_rotating_a_digit_depends_on_that_digit_alone(tmp_path):
    """Removing one digit must re-rotate no other (neighbouring data sets stay neighbouring).

    Angles drawn by position in the file turned every digit after the removed one differently.
    """
    full = write_mnist(tmp_path / "d" / "mnist", n_train=60, n_test=20, gz=False)
    x, y = full["train"]
    d = tmp_path / "d-minus-first" / "mnist"
    d.mkdir(parents=True)
    for stem, arr in (("train-images-idx3-ubyte", x[1:]), ("train-labels-idx1-ubyte", y[1:])):
        (d / stem).write_bytes(idx_bytes(arr))
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (d / stem).write_bytes((tmp_path / "d" / "mnist" / stem).read_bytes())
    a = load_dataset("rotated_mnist", tmp_path / "d", val_size=0)
    b = load_dataset("rotated_mnist", tmp_path / "d-minus-first", val_size=0)
    assert torch.equal(b.train_x, a.train_x[1:]) and torch.equal(b.test_x, a.test_x)
    plain = load_dataset("mnist", tmp_path / "d", val_size=0)
    assert (a.train_x != plain.train_x).flatten(1).any(1).all()  # every digit is rotated
    angles = rotation_angles(plain.train_x, plain.train_y)
    assert ((0 <= angles) & (angles < 360)).all() and len(np.unique(angles)) == len(angles)
