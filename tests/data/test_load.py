"""The entry point: names, roots, error messages and the ImageDataset contract."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import eqdp_ray.data as data
from eqdp_ray.data import DATASETS, DatasetError, ImageDataset, default_root, load_dataset


def test_public_api():
    assert DATASETS == ("cifar10", "cifar100", "mnist", "rotated_mnist", "digits")
    assert issubclass(DatasetError, ValueError)
    for name in ("load_dataset", "default_root", "augment_batch", "normalize", "ImageDataset"):
        assert name in data.__all__


def test_unknown_name_lists_valid_names():
    with pytest.raises(DatasetError) as e:
        load_dataset("imagenet")
    msg = str(e.value)
    assert "'imagenet'" in msg and all(n in msg for n in DATASETS)


def test_default_root_env_and_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv("EQDP_DATA_DIR", str(tmp_path))
    assert default_root() == tmp_path
    monkeypatch.delenv("EQDP_DATA_DIR")
    assert default_root() == Path.home() / ".cache" / "eqdp-ray" / "data"


def test_root_none_uses_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("EQDP_DATA_DIR", str(tmp_path / "env-root"))
    with pytest.raises(DatasetError, match="env-root"):
        load_dataset("cifar10")


def test_data_layer_imports_no_other_subpackage():
    """Only itself and the config layer below it (for the shared UserError base)."""
    import ast

    BELOW = ("eqdp_ray.data", "eqdp_ray.config")

    pkg = Path(data.__file__).parent
    for f in pkg.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                assert not (node.level >= 2 or mod.startswith("eqdp_ray.") and not mod.startswith(BELOW)), f
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("eqdp_ray.") and not a.name.startswith(BELOW) for a in node.names), f


def _tiny(**over):
    kw = dict(
        name="t",
        train_x=torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
        train_y=torch.zeros(4, dtype=torch.int64),
        val_x=torch.zeros(0, 1, 8, 8, dtype=torch.uint8),
        val_y=torch.zeros(0, dtype=torch.int64),
        test_x=torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
        test_y=torch.ones(2, dtype=torch.int64),
        num_classes=2,
        mean=(0.5,),
        std=(0.25,),
        hflip=False,
    )
    kw.update(over)
    return ImageDataset(**kw)


def test_image_dataset_contract():
    ds = _tiny()
    assert (ds.in_channels, ds.image_size) == (1, 8)
    assert "train=4" in repr(ds) and "tensor" not in repr(ds)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "x"  # frozen
    with pytest.raises(DatasetError, match="train_x must be a uint8"):
        _tiny(train_x=torch.zeros(4, 1, 8, 8))
    with pytest.raises(DatasetError, match="3 labels"):
        _tiny(test_y=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(DatasetError, match="outside 0..1"):
        _tiny(test_y=torch.full((2,), 5, dtype=torch.int64))
    with pytest.raises(DatasetError, match="one value per channel"):
        _tiny(mean=(0.5, 0.5))
    with pytest.raises(DatasetError, match="val_x images"):
        _tiny(val_x=torch.zeros(0, 3, 8, 8, dtype=torch.uint8))
