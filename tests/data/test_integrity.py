"""A copy cut to a whole number of records parses cleanly; the loaders must still refuse it.

Files are written at their official sizes in the official layouts (with made-up pixels), so
these tests run without ../shared; they take a second or two and ~200 MB of temporary disk.
"""

import logging

import pytest

from eqdp_ray.data import DatasetError, load_dataset
from eqdp_ray.data.integrity import check_official_copy

from .formats import write_cifar10_bin, write_cifar10_py, write_mnist

RECORD = 1 + 3 * 32 * 32


def cut(path, records, record_bytes):
    path.write_bytes(path.read_bytes()[: records * record_bytes])


def test_cifar10_batch_cut_to_half_is_refused(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    write_cifar10_bin(d, 10_000)
    load_dataset("cifar10", tmp_path, val_size=0.1)  # the official sizes load
    cut(d / "data_batch_1.bin", 5_000, RECORD)  # what used to train on 45,000 of 50,000 images
    with pytest.raises(DatasetError, match=r"data_batch_1.bin holds 5,000 records, the official CIFAR-10 file 10,000"):
        load_dataset("cifar10", tmp_path, val_size=0.1)


def test_cifar10_python_batch_with_the_official_count_but_other_content_is_refused(tmp_path):
    write_cifar10_py(tmp_path / "cifar-10-batches-py", 10_000)  # official counts, made-up pixels
    with pytest.raises(DatasetError, match=r"data_batch_1 has the official record count but not the official content"):
        load_dataset("cifar10", tmp_path, val_size=0.1)


def test_small_copy_in_the_official_layout_loads_with_a_warning(tmp_path, caplog):
    write_cifar10_bin(tmp_path / "cifar-10-batches-bin", 20)
    with caplog.at_level(logging.WARNING, logger="eqdp_ray.data.integrity"):
        ds = load_dataset("cifar10", tmp_path, val_size=10)
    assert len(ds.train_y) + len(ds.val_y) == 100
    assert "is not the official data set: 120 records where the official files hold 60,000" in caplog.text


def test_mnist_training_file_with_fewer_digits_is_refused(tmp_path):
    write_mnist(tmp_path / "mnist", n_train=30_000, n_test=10_000, gz=False)  # headers agree with the bytes
    with pytest.raises(
        DatasetError, match=r"train-images-idx3-ubyte holds 30,000 records, the official MNIST file 60,000"
    ):
        load_dataset("mnist", tmp_path, val_size=0.1)


def test_the_rule(tmp_path):
    files = {tmp_path / "a": 3, tmp_path / "b": 3}
    for path in files:
        path.write_bytes(b"x")
    assert check_official_copy("X", files, {"a": 3, "b": 3}) is True
    assert check_official_copy("X", {tmp_path / "a": 1, tmp_path / "b": 2}, {"a": 3, "b": 3}) is False
    with pytest.raises(DatasetError, match="b holds 2 records"):
        check_official_copy("X", {tmp_path / "a": 3, tmp_path / "b": 2}, {"a": 3, "b": 3})
    with pytest.raises(DatasetError, match="not the official content"):
        check_official_copy("X", files, {"a": 3, "b": 3}, {"b": "0" * 32})
