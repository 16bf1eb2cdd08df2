"""Data layer: image data sets as uint8 tensors with train/val/test splits, plus batched
augmentation and normalisation. Imports no other eqdp_ray subpackage."""

from .augment import apply_crop_flip, augment_batch, crop_flip_for_rows, draw_crop_flip, normalize
from .dataset import ImageDataset
from .errors import DatasetError
from .load import DATASETS, batch_too_large_message, default_root, load_dataset

__all__ = [
    "DATASETS",
    "batch_too_large_message",
    "DatasetError",
    "ImageDataset",
    "apply_crop_flip",
    "augment_batch",
    "crop_flip_for_rows",
    "draw_crop_flip",
    "default_root",
    "load_dataset",
    "normalize",
]
