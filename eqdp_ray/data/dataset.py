"""The in-memory data set type shared by training, tuning and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import DatasetError

__all__ = ["ImageDataset", "SourceData"]


def _check_pair(name: str, split: str, x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise DatasetError(f"{name}: {split}_x must be a uint8 tensor of shape N,C,H,W; got {got}")
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.ndim != 1:
        got = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise DatasetError(f"{name}: {split}_y must be a 1-D int64 tensor; got {got}")
    if x.shape[0] != y.shape[0]:
        raise DatasetError(f"{name}: {split}_x has {x.shape[0]} images but {split}_y has {y.shape[0]} labels")


@dataclass(frozen=True, eq=False, repr=False)
class ImageDataset:
    """Train/val/test image tensors kept as uint8 on the CPU.

    Pixels stay uint8 (4x smaller than float) and are turned into floats per batch on the
    training device with :func:`eqdp_ray.data.normalize`. ``val`` is carved from the
    official training data and is meant for model selection; ``test`` is the official test
    set and is only reported, so tuning never sees it.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool

    def __post_init__(self) -> None:
        # Fail at construction, not deep inside a training step, when a hand-built data set
        # (e.g. a synthetic one in a test) breaks the contract.
        for split in ("train", "val", "test"):
            _check_pair(self.name, split, getattr(self, f"{split}_x"), getattr(self, f"{split}_y"))
        c, h, w = self.train_x.shape[1:]
        if h != w:
            raise DatasetError(f"{self.name}: images must be square, got {h}x{w}")
        for split in ("val", "test"):
            if getattr(self, f"{split}_x").shape[1:] != self.train_x.shape[1:]:
                raise DatasetError(
                    f"{self.name}: {split}_x images are {tuple(getattr(self, f'{split}_x').shape[1:])}"
                    f" but train_x images are {(c, h, w)}"
                )
        if len(self.mean) != c or len(self.std) != c:
            raise DatasetError(
                f"{self.name}: mean/std need one value per channel ({c}); got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise DatasetError(f"{self.name}: std values must be positive, got {self.std}")
        if self.num_classes < 1:
            raise DatasetError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
        for split in ("train", "val", "test"):
            y = getattr(self, f"{split}_y")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise DatasetError(f"{self.name}: {split}_y has labels outside 0..{self.num_classes - 1}")

    @property
    def in_channels(self) -> int:
        """Number of colour channels (3 for CIFAR, 1 for MNIST and digits)."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Side length in pixels; images are square."""
        return int(self.train_x.shape[-1])

    def __repr__(self) -> str:  # the default repr would print whole tensors
        return (
            f"ImageDataset(name={self.name!r}, train={len(self.train_y)}, val={len(self.val_y)}, "
            f"test={len(self.test_y)}, shape={tuple(self.train_x.shape[1:])}, "
            f"num_classes={self.num_classes}, hflip={self.hflip})"
        )


@dataclass(frozen=True, eq=False)
class SourceData:
    """What a data-set reader returns: the official train/test parts before any split.

    Internal hand-off between the per-data-set readers and :func:`load_dataset`, which
    carves the validation split and the subsets the same way for every data set.
    ``public_train_size`` is the official training part's size, a constant of the data set (and
    of the MNIST test-only layout), never the copy's own: count-valued split sizes are shares of
    it, so that the split thresholds do not depend on the (private) data.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    public_train_size: int
