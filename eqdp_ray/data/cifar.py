"""CIFAR-10 and CIFAR-100 readers for both official layouts, plus the official download.

The binary layout is read with one ``np.fromfile`` per batch (50,000 images in well under a
second). The python layout is what most users already have from torchvision, so it is read
too, through an unpickler that only accepts the numpy types the official files contain.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .dataset import SourceData
from .download import download_file, extract_tar
from .errors import DatasetError
from .integrity import check_official_copy

__all__ = [
    "CIFAR10_ARCHIVE",
    "CIFAR100_ARCHIVE",
    "OFFICIAL_MD5",
    "OFFICIAL_RECORDS",
    "load_cifar",
    "read_cifar_bin",
    "read_cifar_pickle",
]

BASE_URL = "https://www.cs.toronto.edu/~kriz/"
# (url, md5) of the official binary archives; module-level so tests can point them elsewhere.
CIFAR10_ARCHIVE = (BASE_URL + "cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")
CIFAR100_ARCHIVE = (BASE_URL + "cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8")

# Records per official file, and the MD5s published for the python layout's files (the binary
# layout publishes only its archive's, above). See integrity.check_official_copy.
OFFICIAL_RECORDS = {
    "cifar10": {
        stem + ext: 10_000 for stem in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] for ext in ("", ".bin")
    },
    "cifar100": {"train": 50_000, "train.bin": 50_000, "test": 10_000, "test.bin": 10_000},
}
OFFICIAL_MD5 = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    "cifar100": {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
}

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class _Layout:
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    binary: bool

    @property
    def files(self) -> tuple[str, ...]:
        return self.train + self.test


_LAYOUTS = {
    "cifar10": (
        _Layout("cifar-10-batches-bin", tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), True),
        _Layout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), False),
    ),
    "cifar100": (
        _Layout("cifar-100-binary", ("train.bin",), ("test.bin",), True),
        _Layout("cifar-100-python", ("train",), ("test",), False),
    ),
}


def read_cifar_bin(path: str | Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a binary CIFAR batch: records of ``label_bytes`` label bytes + 3,072 pixel bytes.

    Returns images as uint8 N,3,32,32 (R, G, B planes, row-major) and the *last* label byte
    of each record, which is the only label in CIFAR-10 and the fine label in CIFAR-100.
    """
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    rec = label_bytes + _PIXELS
    if raw.size == 0 or raw.size % rec:
        raise DatasetError(
            f"{path} is not a CIFAR binary batch: {raw.size} bytes is not a multiple of the "
            f"{rec}-byte record size (truncated download?); delete it and download again"
        )
    raw = raw.reshape(-1, rec)
    labels = raw[:, label_bytes - 1].astype(np.int64)
    images = np.ascontiguousarray(raw[:, label_bytes:]).reshape(-1, 3, 32, 32)
    return images, labels


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuse any global but the numpy array machinery: a CIFAR pickle needs nothing else,
    and unpickling arbitrary globals would run code from whatever file sits in data.root."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")


def _get(entry: dict, key: str):
    for k in (key, key.encode()):
        if k in entry:
            return entry[k]
    raise KeyError(key)


def read_cifar_pickle(path: str | Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a python-layout CIFAR batch (a pickled dict with ``data`` and ``label_key``)."""
    path = Path(path)
    try:
        # latin1 is what numpy needs for arrays pickled by Python 2, as the official files are.
        entry = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        data = np.asarray(_get(entry, "data"), dtype=np.uint8)
        labels = np.asarray(_get(entry, label_key), dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, EOFError, TypeError, ValueError, AttributeError) as e:
        raise DatasetError(
            f"{path} is not a CIFAR python batch ({type(e).__name__}: {e}); delete it or point "
            "data.root at an official copy"
        ) from e
    if data.ndim != 2 or data.shape[1] != _PIXELS or len(labels) != len(data):
        raise DatasetError(
            f"{path}: expected data of shape N,{_PIXELS} and N labels, got {data.shape} and {len(labels)}"
        )
    return np.ascontiguousarray(data).reshape(-1, 3, 32, 32), labels


def _find(name: str, root: Path) -> tuple[_Layout, Path] | None:
    """First layout whose files are all present, in root/<folder> or in root itself."""
    for layout in _LAYOUTS[name]:
        for d in (root / layout.folder, root):
            if all((d / f).is_file() for f in layout.files):
                return layout, d
    return None


def _missing_message(name: str, root: Path) -> str:
    bin_layout, py_layout = _LAYOUTS[name]
    pretty = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    partial = ""
    for layout in _LAYOUTS[name]:
        for d in (root / layout.folder, root):
            have = [f for f in layout.files if (d / f).is_file()]
            if have:
                lacking = [f for f in layout.files if f not in have]
                partial = f" ({d} is incomplete: lacks {', '.join(lacking)})"
                break
        if partial:
            break
    return (
        f"{pretty} not found in {root}{partial}: expected {', '.join(bin_layout.files)} in "
        f"{root / bin_layout.folder} (official binary layout) or {', '.join(py_layout.files)} in "
        f"{root / py_layout.folder} (python layout); pass --set data.download=true or point "
        "data.root at a copy"
    )


def _read_files(layout: _Layout, d: Path, files: tuple[str, ...], label_bytes: int, label_key: str):
    parts = [
        read_cifar_bin(d / f, label_bytes) if layout.binary else read_cifar_pickle(d / f, label_key) for f in files
    ]
    x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return x, y, {d / f: len(p[1]) for f, p in zip(files, parts)}


def load_cifar(name: str, root: str | Path, *, download: bool = False) -> SourceData:
    """Load CIFAR-10 (``name='cifar10'``) or CIFAR-100 (``'cifar100'``, fine labels).

    Looks for the binary layout, then the python layout, each in ``root/<official folder>``
    or in ``root`` itself. With ``download`` and nothing found, fetches the official binary
    archive into ``root``, checks its MD5 and unpacks it.
    """
    if name not in _LAYOUTS:
        raise DatasetError(f"unknown CIFAR variant {name!r}; use 'cifar10' or 'cifar100'")
    root = Path(root).expanduser()
    found = _find(name, root)
    if found is None and download:
        url, md5 = CIFAR10_ARCHIVE if name == "cifar10" else CIFAR100_ARCHIVE
        archive = download_file(url, root / url.rsplit("/", 1)[-1], md5)
        extract_tar(archive, root)
        found = _find(name, root)
        if found is None:
            raise DatasetError(
                f"downloaded {archive} but it did not contain the expected files; " + _missing_message(name, root)
            )
    if found is None:
        raise DatasetError(_missing_message(name, root))
    layout, d = found
    num_classes = 10 if name == "cifar10" else 100
    label_bytes = 1 if name == "cifar10" else 2
    label_key = "labels" if name == "cifar10" else "fine_labels"
    train_x, train_y, train_records = _read_files(layout, d, layout.train, label_bytes, label_key)
    test_x, test_y, test_records = _read_files(layout, d, layout.test, label_bytes, label_key)
    pretty = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    check_official_copy(
        pretty,
        train_records | test_records,
        OFFICIAL_RECORDS[name],
        OFFICIAL_MD5[name],
        cuts_parse=layout.binary,  # a cut pickle fails to load; a cut batch of fixed-size records does not
    )
    for part, y in (("train", train_y), ("test", test_y)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DatasetError(f"{d}: {part} labels outside 0..{num_classes - 1}; is this really {name}?")
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    return SourceData(
        train_x=torch.from_numpy(train_x),
        train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x),
        test_y=torch.from_numpy(test_y),
        num_classes=num_classes,
        mean=mean,
        std=std,
        hflip=True,
        public_train_size=sum(OFFICIAL_RECORDS[name][f] for f in layout.train),
    )
