"""MNIST and rotated MNIST from the official IDX files (plain or gzipped).

Test-set-only copies (such as the offline one shipped for tests, which has just the
``t10k-*`` files) are handled by splitting the test digits into a training pool and a test
part by each digit's own hash; see :func:`load_mnist`.
"""

from __future__ import annotations

import gzip
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import SourceData
from .download import download_file
from .errors import DatasetError
from .integrity import check_official_copy
from .splits import example_hashes, hash_split

__all__ = [
    "MNIST_FILES",
    "MNIST_MEAN",
    "MNIST_STD",
    "ROTATION_SEED",
    "TEST_ONLY_TEST_FRACTION",
    "TEST_ONLY_TRAIN_SIZE",
    "load_mnist",
    "read_idx",
    "rotate_images",
    "rotation_angles",
    "split_test_only_copy",
]

BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# file stem -> md5 of the official .gz; checked only for files this module downloads,
# since other copies (like the offline one) may be recompressed with different headers.
MNIST_FILES = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
# Digits per official images file (the count in its IDX header); its labels file holds as many
# (_read_pair checks), so only the images files are counted: see integrity.check_official_copy.
OFFICIAL_RECORDS = {"train-images-idx3-ubyte": 60_000, "t10k-images-idx3-ubyte": 10_000}
_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)

# Each digit's rotation angle is a hash of its own pixels and label with this fixed key, not of
# the split seed nor of its position in the file: every run and split sees the same rotated
# digits (a data set, not an augmentation), and adding or removing one digit re-rotates no other.
ROTATION_SEED = 12345
# Test-set-only copies: a digit is in the test part iff its own hash (pixels and label, keyed
# with ROTATION_SEED like its angle, for another purpose) is below this fraction, so removing
# or adding one digit moves no other between training and test (a position rule, every 5th
# digit, moved about a fifth of the later ones). About 2,000 of the official 10,000 digits;
# a hash, unlike a block, also mixes both halves of the official file (the first 5,000 digits
# are cleaner than the last 5,000) into both parts.
TEST_ONLY_TEST_FRACTION = 0.2
# The training pool's public size in that layout (the official test file's 10,000 less the
# test part's expected 2,000): a published constant, never the copy's own count.
TEST_ONLY_TRAIN_SIZE = 8_000

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or not, detected from its first bytes)."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DatasetError(f"{path}: corrupt gzip data ({e}); delete it and download again") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(
            f"{path}: header says shape {shape} ({expected} bytes) but {len(data) - header} "
            "bytes follow (truncated download?)"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).copy()


def _locate(d: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (d / name).is_file():
            return d / name
    return None


def _candidates(root: Path) -> list[Path]:
    # root/mnist, root itself, and torchvision's layout.
    return [root / "mnist", root, root / "MNIST" / "raw"]


def _find(root: Path, stems: tuple[str, ...]) -> Path | None:
    for d in _candidates(root):
        if all(_locate(d, s) for s in stems):
            return d
    return None


def rotate_images(x: torch.Tensor, angles_deg: torch.Tensor | np.ndarray, chunk: int = 8192) -> torch.Tensor:
    """Rotate each uint8 N,C,H,W image about its centre by its angle (degrees), bilinear.

    Counter-clockwise as displayed (row 0 at the top) for positive angles. Corners that come
    from outside the image are filled with 0 (black, the MNIST background) and the size stays
    H,W. Done batched with ``affine_grid``/``grid_sample``, in chunks to bound memory.
    """
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise TypeError(f"rotate_images expects uint8 N,C,H,W, got {x.dtype} {tuple(x.shape)}")
    a = torch.as_tensor(np.asarray(angles_deg), dtype=torch.float64).reshape(-1)
    if len(a) != len(x):
        raise ValueError(f"need one angle per image: {len(a)} angles for {len(x)} images")
    rad = torch.deg2rad(a)
    cos, sin = torch.cos(rad), torch.sin(rad)
    # theta maps output to input coordinates (x right, y down, normalised to [-1, 1]);
    # sampling at R(-angle) in these coordinates shows the content turned counter-clockwise.
    theta = torch.zeros(len(x), 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    out = torch.empty_like(x)
    for s in range(0, len(x), chunk):
        xb = x[s : s + chunk].to(torch.float32)
        grid = F.affine_grid(theta[s : s + chunk].to(torch.float32), list(xb.shape), align_corners=False)
        yb = F.grid_sample(xb, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[s : s + chunk] = yb.round_().clamp_(0, 255).to(torch.uint8)
    return out


def rotation_angles(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Each digit's angle in [0, 360) degrees: a fixed function of that digit (pixels, label) alone."""
    return 360.0 * example_hashes(x.numpy(), y.numpy(), ROTATION_SEED, "rotation")


def split_test_only_copy(x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Test-set-only layout: (training pool, test part) indices, each digit's side a function of that digit alone."""
    return hash_split(x.numpy(), y.numpy(), TEST_ONLY_TEST_FRACTION, ROTATION_SEED, "mnist-test-part")


def _read_pair(d: Path, stems: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    images_path, labels_path = _locate(d, stems[0]), _locate(d, stems[1])
    assert images_path is not None and labels_path is not None
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(
            f"{d}: {images_path.name} has shape {images.shape} and {labels_path.name} has shape "
            f"{labels.shape}; expected N,28,28 images and N labels"
        )
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{labels_path}: labels outside 0..9; is this MNIST?")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _missing_message(root: Path) -> str:
    files = ", ".join(s + "[.gz]" for s in MNIST_FILES)
    return (
        f"MNIST not found in {root}: expected {files} in {root / 'mnist'} or {root}; "
        "pass --set data.download=true or point data.root at a copy"
    )


def load_mnist(root: str | Path, *, download: bool = False, rotated: bool = False) -> SourceData:
    """Load MNIST (or rotated MNIST) from IDX files in ``root/mnist``, ``root`` or ``root/MNIST/raw``.

    Test-set-only copies: if only the ``t10k-*`` files exist (and ``download`` is off), a
    warning is issued and the official test digits are split deterministically, independent of
    any seed and of every other digit: a digit whose own hash is below
    :data:`TEST_ONLY_TEST_FRACTION` (2,020 of the official 10,000) forms
    the test part, the others (about 8,000) the training pool from which :func:`load_dataset`
    carves validation.

    Rotated MNIST: each digit is turned by an angle in [0, 360) given by a hash of its own pixels
    and label keyed with :data:`ROTATION_SEED` (:func:`rotation_angles`; uniform for distinct
    digits), bilinearly, staying 28x28. Both training and test digits are rotated.

    ``public_train_size`` is 60,000 (the official training file) or, in the test-only layout,
    :data:`TEST_ONLY_TRAIN_SIZE` = 8,000 (the official test file's 10,000 less its test part's
    expected 2,000), whatever the copy holds.
    """
    root = Path(root).expanduser()
    full = _find(root, _TRAIN + _TEST)
    if full is None and download:
        target = _find(root, _TEST) or _find(root, _TRAIN) or root / "mnist"
        for stem, md5 in MNIST_FILES.items():
            if _locate(target, stem) is None:
                download_file(BASE_URL + stem + ".gz", target / (stem + ".gz"), md5)
        full = _find(root, _TRAIN + _TEST)
    if full is not None:
        public_train_size = OFFICIAL_RECORDS[_TRAIN[0]]
        train_x, train_y = _read_pair(full, _TRAIN)
        test_x, test_y = _read_pair(full, _TEST)
        # An IDX header gives the count, so read_idx refuses a cut file (and gzip a cut .gz).
        counts = {full / _TRAIN[0]: len(train_y), full / _TEST[0]: len(test_y)}  # by stem
        check_official_copy("MNIST", counts, OFFICIAL_RECORDS, cuts_parse=False)
        if rotated:
            train_x = rotate_images(train_x, rotation_angles(train_x, train_y))
            test_x = rotate_images(test_x, rotation_angles(test_x, test_y))
    else:
        test_dir = _find(root, _TEST)
        if test_dir is None:
            raise DatasetError(_missing_message(root))
        warnings.warn(
            f"only the MNIST test set (t10k-*) was found in {test_dir}: splitting its digits by "
            "their hashes into about 8,000 for training/validation and 2,000 for test. Pass "
            "--set data.download=true for the full 60,000-digit training set",
            UserWarning,
            stacklevel=4,  # the caller of load_dataset
        )
        x, y = _read_pair(test_dir, _TEST)
        public_train_size = TEST_ONLY_TRAIN_SIZE
        check_official_copy("MNIST", {test_dir / _TEST[0]: len(y)}, OFFICIAL_RECORDS, cuts_parse=False)
        pool, test = (torch.from_numpy(i) for i in split_test_only_copy(x, y))  # of the upright digits
        if rotated:
            x = rotate_images(x, rotation_angles(x, y))  # same angles as in full mode
        train_x, train_y = x[pool].contiguous(), y[pool].contiguous()
        test_x, test_y = x[test].contiguous(), y[test].contiguous()
    return SourceData(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=10,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        hflip=False,
        public_train_size=public_train_size,
    )
