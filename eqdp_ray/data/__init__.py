"""Data layer: image data sets as uint8 tensors with train/val/test splits, plus batched
augmentation and normalisation. Imports no other eqdp_ray subpackage."""

from .augment import augment_batch, normalize
from .dataset import ImageDataset
from .errors import DatasetError
from .load import DATASETS, default_root, load_dataset

__all__ = [
    "DATASETS",
    "DatasetError",
    "ImageDataset",
    "augment_batch",
    "default_root",
    "load_dataset",
    "normalize",
]
