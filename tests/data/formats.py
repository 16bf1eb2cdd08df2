"""Writers of small files in the official data-set formats, for synthetic test data."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np


def fake_images(rng: np.random.Generator, n: int, c: int = 3, h: int = 32) -> np.ndarray:
    return rng.integers(0, 256, size=(n, c, h, h), dtype=np.uint8)


def write_cifar10_bin(d: Path, n_per_batch: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """cifar-10-batches-bin layout: records of 1 label byte + R, G, B planes."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for f in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        x = fake_images(rng, n_per_batch)
        y = rng.integers(0, 10, size=n_per_batch).astype(np.uint8)
        rec = np.concatenate([y[:, None], x.reshape(n_per_batch, -1)], axis=1)
        rec.tofile(d / f)
        out[f] = (x, y)
    return out


def write_cifar100_bin(d: Path, n_train: int, n_test: int, seed: int = 0):
    """cifar-100-binary layout: coarse label byte, fine label byte, 3,072 pixel bytes."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for f, n in (("train.bin", n_train), ("test.bin", n_test)):
        x = fake_images(rng, n)
        fine = rng.integers(0, 100, size=n).astype(np.uint8)
        coarse = (fine // 5).astype(np.uint8)
        rec = np.concatenate([coarse[:, None], fine[:, None], x.reshape(n, -1)], axis=1)
        rec.tofile(d / f)
        out[f] = (x, fine)
    return out


def _pickle_batch(path: Path, x: np.ndarray, label_key: bytes, labels: list[int]) -> None:
    # The official files come from Python 2: byte-string keys, N x 3072 uint8 data, list labels.
    entry = {b"batch_label": b"synthetic", label_key: labels, b"data": x.reshape(len(x), -1)}
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar10_py(d: Path, n_per_batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = fake_images(rng, n_per_batch)
        y = rng.integers(0, 10, size=n_per_batch)
        _pickle_batch(d / f, x, b"labels", [int(v) for v in y])
        out[f] = (x, y)
    return out


def write_cifar100_py(d: Path, n_train: int, n_test: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for f, n in (("train", n_train), ("test", n_test)):
        x = fake_images(rng, n)
        fine = rng.integers(0, 100, size=n)
        entry = {
            b"filenames": [b"x.png"] * n,
            b"batch_label": b"synthetic",
            b"fine_labels": [int(v) for v in fine],
            b"coarse_labels": [int(v) // 5 for v in fine],
            b"data": x.reshape(n, -1),
        }
        with open(d / f, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
        out[f] = (x, fine)
    return out


def idx_bytes(arr: np.ndarray) -> bytes:
    """Serialize a uint8 array in the IDX format (magic 0x0000 08 ndim, big-endian dims)."""
    assert arr.dtype == np.uint8
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return header + arr.tobytes()


def write_mnist(d: Path, n_train: int, n_test: int, *, gz: bool, seed: int = 0, train: bool = True):
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    parts = [("t10k", n_test)] + ([("train", n_train)] if train else [])
    for prefix, n in parts:
        x = np.zeros((n, 28, 28), dtype=np.uint8)
        x[:, 6:22, 10:18] = rng.integers(1, 256, size=(n, 16, 8), dtype=np.uint8)  # off-centre blob
        y = (np.arange(n) % 10).astype(np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", x), (f"{prefix}-labels-idx1-ubyte", y)):
            data = idx_bytes(arr)
            if gz:
                (d / (stem + ".gz")).write_bytes(gzip.compress(data))
            else:
                (d / stem).write_bytes(data)
        out[prefix] = (x, y)
    return out
