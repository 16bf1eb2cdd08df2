"""The one entry point: name -> :class:`ImageDataset` with train/val/test splits."""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import numpy as np
import torch

from .cifar import load_cifar
from .dataset import ImageDataset, SourceData
from .digits import load_digits_source
from .errors import DatasetError
from .mnist import load_mnist
from .splits import STREAM_TEST_SUBSET, balanced_subset, hash_split, rng_for, split_rate

__all__ = ["DATASETS", "default_root", "batch_too_large_message", "load_dataset"]

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "mnist", "rotated_mnist", "digits")

ENV_DATA_DIR = "EQDP_DATA_DIR"


def default_root() -> Path:
    """Where data sets live when no root is given: ``$EQDP_DATA_DIR`` or ~/.cache/eqdp-ray/data."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "eqdp-ray" / "data"


def _source(name: str, root: Path, download: bool) -> SourceData:
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, download=download)
    if name in ("mnist", "rotated_mnist"):
        return load_mnist(root, download=download, rotated=name == "rotated_mnist")
    return load_digits_source()


def _take(x: torch.Tensor, y: torch.Tensor, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.from_numpy(idx)
    return x[t].contiguous(), y[t].contiguous()


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    download: bool = False,
    val_size: int | float = 0.1,
    seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> ImageDataset:
    """Load a data set by name and split it for training, model selection and reporting.

    - ``val_size`` (int count or float fraction in [0, 1)) is carved from the official
      training data by each example's own hash with ``seed``: an example is held out iff its
      hash is below the fraction, or below count / the data set's official training size (a
      public constant, never the copy's own size), so that adding or removing one training
      example moves no other between the splits. The size is binomial: about the count on
      the official data, about count * len(copy) / official size on a copy of another size.
      The official test set is never touched by it.
    - ``train_subset`` then keeps about that many of the remaining training examples (again
      relative to the official size), by the same kind of hash; ``test_subset`` takes that many test examples, as equal a number per
      class as possible (public data: a seeded draw is fine there).
    - ``root`` defaults to :func:`default_root`; ``download`` fetches missing official files
      (CIFAR, MNIST). ``digits`` ships with scikit-learn and ignores both.

    All problems a user can fix (unknown name, missing files, bad sizes) raise
    :class:`DatasetError` with a message saying what to change.
    """
    if not isinstance(name, str) or name.strip().lower() not in DATASETS:
        raise DatasetError(f"unknown data set {name!r}; valid names are: {', '.join(DATASETS)}")
    name = name.strip().lower()
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise DatasetError(f"seed must be a non-negative int, got {seed!r}")
    for what, v in (("train_subset", train_subset), ("test_subset", test_subset)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1):
            raise DatasetError(f"{what} must be a positive int or None, got {v!r}")
    # Check val_size's type/range before any slow loading; its threshold is set below.
    split_rate(val_size, 2**62, "val_size")
    root_path = default_root() if root is None else Path(root).expanduser()

    src = _source(name, root_path, download)

    # Private data is split by each example's own hash (splits.py) against thresholds that are
    # public constants: a fraction, or a count over the data set's official training size,
    # never over the copy's own size. So adding or removing one example moves no other between
    # train and validation, or in or out of the subset (docs/PRIVACY.md).
    public_n = src.public_train_size
    val_rate = split_rate(val_size, public_n, "val_size")
    images = src.train_x.numpy()
    train_idx, val_idx = hash_split(images, src.train_y.numpy(), val_rate, seed, "val")
    train_x, train_y = _take(src.train_x, src.train_y, train_idx)
    val_x, val_y = _take(src.train_x, src.train_y, val_idx)
    test_x, test_y = src.test_x, src.test_y

    if train_subset is not None:
        public_left = public_n * (1.0 - val_rate)  # the official training set less the validation share
        if train_subset > public_left:
            raise DatasetError(
                f"train_subset={train_subset} is out of range: it must be between 1 and {int(public_left):,} "
                f"(the official training set's {public_n:,} examples less the validation share)"
            )
        _, idx = hash_split(train_x.numpy(), train_y.numpy(), train_subset / public_left, seed, "train_subset")
        train_x, train_y = _take(train_x, train_y, idx)
    if test_subset is not None:
        idx = balanced_subset(test_y.numpy(), test_subset, rng_for(seed, STREAM_TEST_SUBSET), "test_subset")
        test_x, test_y = _take(test_x, test_y, idx)

    return ImageDataset(
        name=name,
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        test_x=test_x.contiguous(),
        test_y=test_y.contiguous(),
        num_classes=src.num_classes,
        mean=tuple(float(m) for m in src.mean),
        std=tuple(float(s) for s in src.std),
        hflip=src.hflip,
    )


def batch_too_large_message(
    batch_key: str, batch: int, train_size: int, *, train_subset: int | None, val_size: int | float
) -> str:
    """The error for an expected batch above the training size, naming the config keys that made the
    training set small: a tiny `train_subset` is the usual cause, not the batch size it would blame."""
    held_out = f"data.val_size={val_size!r} holds out the validation split"
    if train_subset is not None:
        why = (
            f"the training set is only {train_size} examples because data.train_subset={train_subset} keeps "
            f"about that many (chosen by hash, after {held_out})"
        )
        fix = "raise data.train_subset (or remove it)"
    else:
        why = f"the training set is only {train_size} examples ({held_out})"
        fix = "lower data.val_size"
    if train_size == 0:
        return f"{why}: nothing to train on; {fix}"
    return (
        f"'{batch_key}' gives an expected batch of {batch}, but {why}; "
        f"{fix}, or lower '{batch_key}' to at most {train_size}"
    )
