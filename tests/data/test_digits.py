"""scikit-learn digits: the offline quickstart data set."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from eqdp_ray.data import load_dataset


def test_digits_shapes_scaling_and_fixed_test_split():
    ds = load_dataset("digits")
    assert ds.train_x.dtype == torch.uint8 and ds.train_x.shape[1:] == (1, 8, 8)
    assert (ds.in_channels, ds.image_size, ds.num_classes, ds.hflip) == (1, 8, 10, False)
    assert len(ds.train_y) + len(ds.val_y) + len(ds.test_y) == 1_797
    assert len(ds.test_y) == 359  # round(0.2 * 1797)
    # 0..16 scaled to 0..255: the brightest pixel is white, values are multiples of ~16
    all_x = torch.cat([ds.train_x, ds.val_x, ds.test_x])
    assert int(all_x.max()) == 255 and int(all_x.min()) == 0
    ref = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    assert set(np.unique(all_x.numpy())) <= set(np.unique(ref))
    # The test split is stratified: every class appears with roughly its share.
    counts = torch.bincount(ds.test_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_digits_test_split_does_not_depend_on_seed():
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=7)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.val_y, b.val_y) or not torch.equal(a.val_x, b.val_x)
    assert a.mean == b.mean and a.std == b.std


def test_digits_images_are_the_sklearn_images():
    ds = load_dataset("digits", val_size=0)
    ref = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    ours = np.concatenate([ds.train_x[:, 0].numpy(), ds.test_x[:, 0].numpy()])
    key = lambda a: sorted(map(bytes, a.reshape(len(a), -1)))  # noqa: E731 - order-free comparison
    assert key(ours) == key(ref)


def test_digits_mean_std_come_from_its_training_part():
    ds = load_dataset("digits", val_size=0)
    x = ds.train_x.double() / 255
    assert abs(ds.mean[0] - float(x.mean())) < 1e-9
    assert abs(ds.std[0] - float(x.std())) < 1e-9
    assert 0.2 < ds.mean[0] < 0.4 and 0.3 < ds.std[0] < 0.45
