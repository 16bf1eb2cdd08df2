"""scikit-learn's 8x8 handwritten digits: tiny, bundled with sklearn, needs no download.

It is the offline quickstart and test data set, so it must work with no files at all.
"""

from __future__ import annotations

import numpy as np
import torch

from .dataset import SourceData
from .splits import STREAM_FIXED_TEST, rng_for, stratified_split

__all__ = ["DIGITS_TEST_FRACTION", "load_digits_source"]

# sklearn ships no official test set; hold out a fixed stratified 20% (seed 0, independent of
# the split seed) so test numbers are comparable across runs.
DIGITS_TEST_FRACTION = 0.2
_TEST_SEED = 0


def load_digits_source() -> SourceData:
    """The 1,797 digits as uint8 1x8x8 (0..16 scaled to 0..255), split 80/20 train/test.

    mean/std are computed from the 80% training part (the data set has no published
    statistics); like CIFAR's published figures they include the images later used for
    validation, and they do not depend on the split seed.
    """
    from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    x = torch.from_numpy(images.clip(0, 255).astype(np.uint8)).unsqueeze(1).contiguous()
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    k_test = int(round(DIGITS_TEST_FRACTION * len(y)))
    train_idx, test_idx = stratified_split(y.numpy(), k_test, rng_for(_TEST_SEED, STREAM_FIXED_TEST))
    train_x, train_y = x[train_idx], y[train_idx]
    pixels = train_x.to(torch.float64) / 255.0
    mean = (float(pixels.mean()),)
    std = (float(pixels.std()),)
    return SourceData(
        train_x=train_x,
        train_y=train_y,
        test_x=x[test_idx],
        test_y=y[test_idx],
        num_classes=10,
        mean=mean,
        std=std,
        hflip=False,
        public_train_size=len(train_y),  # sklearn's fixed 1,797 digits less the fixed test part: public
    )
