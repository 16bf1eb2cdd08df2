"""The CIFAR-10 pack that travels to the GPU machine: eqdp-ray's own reader loads what it unpacks."""

from __future__ import annotations

import numpy as np
import pytest

from eqdp_ray.data.cifar import load_cifar
from tests.data.formats import write_cifar10_bin


@pytest.mark.parametrize("bits", [8, 5])
def test_unpacked_pack_is_the_official_layout_within_the_stated_error(datapack, tmp_path, bits):
    source = write_cifar10_bin(tmp_path / "src" / "cifar-10-batches-bin", n_per_batch=30)
    pack = tmp_path / "pack.npz.xz"
    datapack.pack(tmp_path / "src", pack, train=70, test=12, bits=bits)  # crosses batch 1 -> 3
    header = datapack.unpack(pack, tmp_path / "out")
    assert header == {"format": "eqdp-cifar10-pack/1", "train": 70, "test": 12, "bits": bits}
    data = load_cifar("cifar10", tmp_path / "out")
    train_x = np.concatenate([source[f"data_batch_{i}.bin"][0] for i in (1, 2, 3)])[:70]
    train_y = np.concatenate([source[f"data_batch_{i}.bin"][1] for i in (1, 2, 3)])[:70]
    assert data.train_x.shape == (70, 3, 32, 32) and data.test_x.shape == (12, 3, 32, 32)
    np.testing.assert_array_equal(data.train_y.numpy(), train_y)
    np.testing.assert_array_equal(data.test_y.numpy(), source["test_batch.bin"][1][:12])
    error = np.abs(data.train_x.numpy().astype(int) - train_x.astype(int))
    assert error.max() <= (0 if bits == 8 else 2 ** (7 - bits))


def test_too_few_source_images_is_an_error(datapack, tmp_path):
    write_cifar10_bin(tmp_path / "cifar-10-batches-bin", n_per_batch=4)
    with pytest.raises(ValueError, match="hold only 20"):
        datapack.pack(tmp_path, tmp_path / "p.xz", train=21, test=2)
