"""Downloads through file:// URLs to archives built here: checksum, atomicity, safe unpacking."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from eqdp_ray.data import DatasetError, cifar, load_dataset, mnist
from eqdp_ray.data.download import download_file, extract_tar, md5sum

from .formats import idx_bytes, write_cifar10_bin, write_mnist


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar10_archive(tmp_path) -> tuple[Path, dict]:
    """A cifar-10-binary.tar.gz in the official layout (one top folder), built from synthetic data."""
    src = tmp_path / "src"
    data = write_cifar10_bin(src / "cifar-10-batches-bin", n_per_batch=5)
    (src / "cifar-10-batches-bin" / "batches.meta.txt").write_text("airplane\n")
    archive = tmp_path / "server" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    return archive, data


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*")) if root.exists() else []


def test_cifar10_download_verifies_and_extracts(cifar10_archive, tmp_path, monkeypatch):
    archive, data = cifar10_archive
    monkeypatch.setattr(cifar, "CIFAR10_ARCHIVE", (archive.as_uri(), _md5(archive)))
    root = tmp_path / "root"
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("cifar10", root)  # no download unless asked
    ds = load_dataset("cifar10", root, download=True, val_size=0)
    assert ds.train_x.shape == (25, 3, 32, 32)
    assert np.array_equal(ds.test_x.numpy(), data["test_batch.bin"][0])
    assert (root / "cifar-10-batches-bin" / "data_batch_5.bin").is_file()
    assert (root / "cifar-10-binary.tar.gz").is_file()
    assert not [p for p in _leftovers(root) if p.endswith(".part") or p.startswith(".extract")]
    # A second call finds the files and does not need the URL any more.
    monkeypatch.setattr(cifar, "CIFAR10_ARCHIVE", ("file:///nonexistent/x.tar.gz", "0" * 32))
    again = load_dataset("cifar10", root, download=True, val_size=0)
    assert torch.equal(again.train_x, ds.train_x)


def test_md5_mismatch_raises_and_leaves_nothing(cifar10_archive, tmp_path, monkeypatch):
    archive, _ = cifar10_archive
    monkeypatch.setattr(cifar, "CIFAR10_ARCHIVE", (archive.as_uri(), "0" * 32))
    root = tmp_path / "root"
    with pytest.raises(DatasetError, match="checksum mismatch") as e:
        load_dataset("cifar10", root, download=True)
    assert _md5(archive) in str(e.value)
    assert _leftovers(root) == []


def test_network_failure_is_a_dataset_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "CIFAR100_ARCHIVE", ((tmp_path / "missing.tar.gz").as_uri(), "0" * 32))
    root = tmp_path / "root"
    with pytest.raises(DatasetError, match="could not download"):
        load_dataset("cifar100", root, download=True)
    assert _leftovers(root) == []


def test_existing_file_with_right_md5_is_not_fetched_again(tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"hello")
    # The URL does not exist: success proves no network access was attempted.
    out = download_file("file:///does/not/exist", dest, md5sum(dest))
    assert out == dest and dest.read_bytes() == b"hello"


def test_existing_file_with_wrong_md5_is_replaced(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"good")
    dest = tmp_path / "dl" / "f.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"stale")
    download_file(src.as_uri(), dest, _md5(src))
    assert dest.read_bytes() == b"good"


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


@pytest.mark.parametrize("evil_name", ["../escape.txt", "/tmp/absolute-eqdp-test.txt", "ok/../../escape.txt"])
def test_extract_refuses_path_traversal(tmp_path, evil_name):
    info = tarfile.TarInfo(evil_name)
    info.size = 3
    archive = _tar_with(tmp_path / "evil.tar.gz", [(info, b"bad")])
    dest = tmp_path / "out"
    with pytest.raises(DatasetError, match="outside"):
        extract_tar(archive, dest)
    assert not (tmp_path / "escape.txt").exists()
    assert _leftovers(dest) == []


def test_extract_refuses_links(tmp_path):
    link = tarfile.TarInfo("data/link")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    archive = _tar_with(tmp_path / "link.tar.gz", [(link, None)])
    with pytest.raises(DatasetError, match="only regular files"):
        extract_tar(archive, tmp_path / "out")
    assert _leftovers(tmp_path / "out") == []


def test_extract_completes_but_never_overwrites(tmp_path):
    a, b = tarfile.TarInfo("top/a.txt"), tarfile.TarInfo("top/b.txt")
    a.size = b.size = 3
    archive = _tar_with(tmp_path / "x.tar.gz", [(a, b"new"), (b, b"new")])
    dest = tmp_path / "out"
    (dest / "top").mkdir(parents=True)
    (dest / "top" / "a.txt").write_text("old")
    extract_tar(archive, dest)
    assert (dest / "top" / "a.txt").read_text() == "old"
    assert (dest / "top" / "b.txt").read_text() == "new"
    assert sorted(p.name for p in dest.iterdir()) == ["top"]


def test_mnist_download_fetches_only_missing_files(tmp_path, monkeypatch):
    server = tmp_path / "server"
    written = write_mnist(server, n_train=30, n_test=20, gz=True)
    md5s = {stem: _md5(server / (stem + ".gz")) for stem in mnist.MNIST_FILES}
    monkeypatch.setattr(mnist, "BASE_URL", server.as_uri() + "/")
    monkeypatch.setattr(mnist, "MNIST_FILES", md5s)
    # The local copy has only the test set, stored uncompressed (and so with another md5).
    local = tmp_path / "root" / "mnist"
    local.mkdir(parents=True)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (local / stem).write_bytes(gzip.decompress((server / (stem + ".gz")).read_bytes()))
    ds = load_dataset("mnist", tmp_path / "root", download=True, val_size=0)
    assert len(ds.train_y) == 30 and len(ds.test_y) == 20
    assert np.array_equal(ds.train_x[:, 0].numpy(), written["train"][0])
    assert sorted(p.name for p in local.iterdir()) == [
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]


def test_mnist_download_md5_mismatch(tmp_path, monkeypatch):
    server = tmp_path / "server"
    server.mkdir()
    (server / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((2, 28, 28), np.uint8))))
    monkeypatch.setattr(mnist, "BASE_URL", server.as_uri() + "/")
    monkeypatch.setattr(mnist, "MNIST_FILES", {"train-images-idx3-ubyte": "1" * 32})
    with pytest.raises(DatasetError, match="checksum mismatch"):
        load_dataset("mnist", tmp_path / "root", download=True)
    assert not [p for p in _leftovers(tmp_path / "root") if p.endswith((".gz", ".part"))]
