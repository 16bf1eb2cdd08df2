"""A copy cut to a whole number of records parses cleanly; the loaders must still refuse it, and
still load a neighbouring copy (the official data plus or minus one example) with a warning.

Files are written at their official sizes in the official layouts (with made-up pixels), so
these tests run without ../shared; they take a second or two and ~200 MB of temporary disk.
"""

import logging
import warnings

import numpy as np
import pytest

from eqdp_ray.data import DatasetError, load_dataset
from eqdp_ray.data.integrity import check_official_copy

from .formats import _pickle_batch, idx_bytes, write_cifar10_bin, write_cifar10_py, write_mnist

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


def test_official_cifar10_plus_one_example_loads_with_a_warning(tmp_path, caplog):
    """A neighbouring data set (D + z) is no truncation: refusing it made D + z untrainable."""
    d = tmp_path / "cifar-10-batches-bin"
    written = write_cifar10_bin(d, 10_000)
    x, y = written["data_batch_1.bin"]
    with open(d / "data_batch_5.bin", "ab") as f:  # z: one more record at the end of a batch
        f.write(bytes([int(y[0])]) + x[0].tobytes())
    with caplog.at_level(logging.WARNING, logger="eqdp_ray.data.integrity"):
        ds = load_dataset("cifar10", tmp_path, val_size=0.1)
    assert len(ds.train_y) + len(ds.val_y) == 50_001
    assert "is not the official data set: 60,001 records where the official files hold 60,000" in caplog.text


def test_cifar10_binary_batch_one_record_short_is_refused_as_a_cut(tmp_path):
    # A cut to whole records parses cleanly in this layout: one record fewer cannot be told from a cut.
    d = tmp_path / "cifar-10-batches-bin"
    write_cifar10_bin(d, 10_000)
    cut(d / "data_batch_3.bin", 9_999, RECORD)
    with pytest.raises(DatasetError, match=r"data_batch_3.bin holds 9,999 records.*CIFAR's python layout"):
        load_dataset("cifar10", tmp_path, val_size=0.1)


def test_cifar10_python_batch_with_one_record_fewer_loads_with_a_warning(tmp_path, caplog):
    # A cut pickle does not load (below), so a consistent one with fewer records was written so.
    d = tmp_path / "cifar-10-batches-py"
    written = write_cifar10_py(d, 10_000)
    x, y = written["data_batch_2"]
    _pickle_batch(d / "data_batch_2", x[1:], b"labels", [int(v) for v in y[1:]])  # D - w
    with caplog.at_level(logging.WARNING, logger="eqdp_ray.data.integrity"):
        ds = load_dataset("cifar10", tmp_path, val_size=0.1)
    assert len(ds.train_y) + len(ds.val_y) == 49_999
    assert "59,999 records where the official files hold 60,000" in caplog.text
    (d / "data_batch_2").write_bytes((d / "data_batch_2").read_bytes()[:-1000])
    with pytest.raises(DatasetError, match="data_batch_2 is not a CIFAR python batch"):
        load_dataset("cifar10", tmp_path, val_size=0.1)


@pytest.mark.parametrize("n_train", [60_001, 59_999], ids=["D+z", "D-w"])
def test_mnist_with_one_digit_more_or_fewer_loads_with_a_warning(tmp_path, caplog, n_train):
    """An IDX header gives the count, so a cut file is refused by the reader; a consistent one is a copy."""
    write_mnist(tmp_path / "mnist", n_train=n_train, n_test=10_000, gz=False)
    with caplog.at_level(logging.WARNING, logger="eqdp_ray.data.integrity"):
        ds = load_dataset("mnist", tmp_path, val_size=0.1)
    assert len(ds.train_y) + len(ds.val_y) == n_train and len(ds.test_y) == 10_000
    assert f"{n_train + 10_000:,} records where the official files hold 70,000" in caplog.text
    images = tmp_path / "mnist" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[: -28 * 28])  # cut by one whole digit: the header says otherwise
    with pytest.raises(DatasetError, match="truncated download"):
        load_dataset("mnist", tmp_path, val_size=0.1)


def test_the_unofficial_copy_warning_counts_each_digit_once(tmp_path, caplog):
    """MNIST keeps a digit in two files (images, labels); the total once counted it twice."""
    d = tmp_path / "mnist"
    d.mkdir()
    (d / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((100, 28, 28), np.uint8)))
    (d / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes((np.arange(100) % 10).astype(np.uint8)))
    with caplog.at_level(logging.WARNING, logger="eqdp_ray.data.integrity"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="only the MNIST test set")
        load_dataset("mnist", tmp_path, val_size=0)
    assert "is not the official data set: 100 records where the official files hold 10,000" in caplog.text


def test_the_rule(tmp_path):
    files = {tmp_path / "a": 3, tmp_path / "b": 3}
    for path in files:
        path.write_bytes(b"x")
    official = {"a": 3, "b": 3}
    for cuts_parse in (True, False):
        assert check_official_copy("X", files, official, cuts_parse=cuts_parse) is True
        assert (
            check_official_copy("X", {tmp_path / "a": 1, tmp_path / "b": 2}, official, cuts_parse=cuts_parse) is False
        )
        assert (
            check_official_copy("X", {tmp_path / "a": 4, tmp_path / "b": 3}, official, cuts_parse=cuts_parse) is False
        )
        with pytest.raises(DatasetError, match="not the official content"):
            check_official_copy("X", files, official, {"b": "0" * 32}, cuts_parse=cuts_parse)
    # fewer records beside official ones: a cut where cuts parse, a copy where the format shows them
    with pytest.raises(DatasetError, match="b holds 2 records"):
        check_official_copy("X", {tmp_path / "a": 3, tmp_path / "b": 2}, official, cuts_parse=True)
    with pytest.raises(DatasetError, match="b holds 2 records"):
        check_official_copy("X", {tmp_path / "a": 4, tmp_path / "b": 2}, official, cuts_parse=True)
    assert check_official_copy("X", {tmp_path / "a": 3, tmp_path / "b": 2}, official, cuts_parse=False) is False
    # a neighbouring copy with more records is not checked against the official checksums
    assert (
        check_official_copy("X", {tmp_path / "a": 4, tmp_path / "b": 3}, official, {"b": "0" * 32}, cuts_parse=True)
        is False
    )
