"""CIFAR-10/100 readers: the real binary copy and synthetic files in the other official layouts."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest
import torch

from eqdp_ray.data import DatasetError, load_dataset
from eqdp_ray.data.cifar import read_cifar_bin

from .formats import write_cifar10_bin, write_cifar10_py, write_cifar100_bin, write_cifar100_py


@pytest.fixture(scope="module")
def cifar10_full(shared_data):
    """Real CIFAR-10 with nothing held out, so class counts are the official ones."""
    t0 = time.perf_counter()
    ds = load_dataset("cifar10", shared_data, val_size=0)
    return ds, time.perf_counter() - t0


def test_real_cifar10_binary_shapes_dtypes_counts(cifar10_full):
    ds, seconds = cifar10_full
    assert ds.train_x.shape == (50_000, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.train_y.shape == (50_000,) and ds.train_y.dtype == torch.int64
    assert ds.test_x.shape == (10_000, 3, 32, 32) and ds.test_y.dtype == torch.int64
    assert ds.val_x.shape == (0, 3, 32, 32) and ds.val_y.shape == (0,)
    assert torch.bincount(ds.train_y, minlength=10).tolist() == [5_000] * 10
    assert torch.bincount(ds.test_y, minlength=10).tolist() == [1_000] * 10
    assert (ds.num_classes, ds.in_channels, ds.image_size, ds.hflip) == (10, 3, 32, True)
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)


def test_real_cifar10_pixels_match_published_statistics(cifar10_full):
    # Proves the R, G, B planes are decoded into the right channels (a transposed or
    # shuffled decode would give other per-channel means).
    ds, _ = cifar10_full
    x = ds.train_x[::5].to(torch.float64) / 255
    mean = x.mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(ds.mean, dtype=torch.float64), atol=3e-3)


def test_real_cifar10_val_split_sizes_and_stratification(shared_data, cifar10_full):
    full, _ = cifar10_full
    ds = load_dataset("cifar10", shared_data, val_size=0.1, seed=3)
    # The split is by each example's own hash: its size is Binomial(50,000, 0.1), std 67.
    assert abs(len(ds.val_y) - 5_000) < 5 * 67
    assert len(ds.train_y) + len(ds.val_y) == 50_000
    # Every class is represented in proportion (Binomial(5,000, 0.1) per class, std 21).
    assert all(abs(c - 500) < 5 * 21 for c in torch.bincount(ds.val_y, minlength=10).tolist())
    pool = torch.cat([ds.train_y, ds.val_y])
    assert torch.bincount(pool, minlength=10).tolist() == [5_000] * 10
    assert torch.equal(ds.test_y, full.test_y)  # the test set is untouched by the split


def test_root_may_be_the_batches_folder_itself(tmp_path):
    write_cifar10_bin(tmp_path / "cifar-10-batches-bin", n_per_batch=7)
    a = load_dataset("cifar10", tmp_path, val_size=0)
    b = load_dataset("cifar10", tmp_path / "cifar-10-batches-bin", val_size=0)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)


def test_real_test_batch_reads_directly(cifar10_bin_dir):
    x, y = read_cifar_bin(cifar10_bin_dir / "test_batch.bin", label_bytes=1)
    assert x.shape == (10_000, 3, 32, 32) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [1_000] * 10


def test_binary_layout_decodes_records_exactly(tmp_path):
    data = write_cifar10_bin(tmp_path / "cifar-10-batches-bin", n_per_batch=6)
    ds = load_dataset("cifar10", tmp_path, val_size=0)
    want_x = np.concatenate([data[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    want_y = np.concatenate([data[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    assert np.array_equal(ds.train_x.numpy(), want_x)
    assert np.array_equal(ds.train_y.numpy(), want_y.astype(np.int64))
    assert np.array_equal(ds.test_x.numpy(), data["test_batch.bin"][0])


def test_python_pickle_layout_cifar10(tmp_path):
    data = write_cifar10_py(tmp_path / "cifar-10-batches-py", n_per_batch=8)
    ds = load_dataset("cifar10", tmp_path, val_size=0)
    want_x = np.concatenate([data[f"data_batch_{i}"][0] for i in range(1, 6)])
    want_y = np.concatenate([data[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert ds.train_x.shape == (40, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert np.array_equal(ds.train_x.numpy(), want_x)
    assert np.array_equal(ds.train_y.numpy(), want_y)
    assert np.array_equal(ds.test_x.numpy(), data["test_batch"][0])
    assert np.array_equal(ds.test_y.numpy(), data["test_batch"][1])


def test_pickle_with_foreign_globals_is_refused(tmp_path):
    # A pickle that would call os.system must not be executed just because it sits in data.root.
    d = tmp_path / "cifar-10-batches-py"
    write_cifar10_py(d, n_per_batch=4)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_cifar100_binary_uses_fine_labels(tmp_path):
    data = write_cifar100_bin(tmp_path / "cifar-100-binary", n_train=60, n_test=30)
    ds = load_dataset("cifar100", tmp_path, val_size=0)
    assert ds.num_classes == 100 and ds.hflip
    assert np.array_equal(ds.train_x.numpy(), data["train.bin"][0])
    assert np.array_equal(ds.train_y.numpy(), data["train.bin"][1].astype(np.int64))
    assert np.array_equal(ds.test_y.numpy(), data["test.bin"][1].astype(np.int64))
    assert ds.mean == (0.5071, 0.4865, 0.4409) and ds.std == (0.2673, 0.2564, 0.2762)


def test_cifar100_python_layout(tmp_path):
    data = write_cifar100_py(tmp_path / "cifar-100-python", n_train=50, n_test=20)
    ds = load_dataset("cifar100", tmp_path, val_size=0)
    assert np.array_equal(ds.train_x.numpy(), data["train"][0])
    assert np.array_equal(ds.train_y.numpy(), data["train"][1])
    assert np.array_equal(ds.test_x.numpy(), data["test"][0])
    assert ds.test_x.shape == (20, 3, 32, 32)


def test_missing_directory_message_says_where_what_and_how(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg
    assert "data_batch_1.bin" in msg and "test_batch.bin" in msg
    assert "data.download=true" in msg and "data.root" in msg


def test_incomplete_folder_names_the_missing_files(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    write_cifar10_bin(d, n_per_batch=3)
    (d / "data_batch_4.bin").unlink()
    with pytest.raises(DatasetError, match="lacks data_batch_4.bin"):
        load_dataset("cifar10", tmp_path)


def test_truncated_binary_batch_is_reported(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    write_cifar10_bin(d, n_per_batch=3)
    raw = (d / "data_batch_2.bin").read_bytes()
    (d / "data_batch_2.bin").write_bytes(raw[:-100])
    with pytest.raises(DatasetError, match="data_batch_2.bin.*truncated"):
        load_dataset("cifar10", tmp_path)


def test_labels_out_of_range_are_reported(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    write_cifar10_bin(d, n_per_batch=3)
    raw = bytearray((d / "test_batch.bin").read_bytes())
    raw[0] = 42
    (d / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="labels outside 0..9"):
        load_dataset("cifar10", tmp_path)
