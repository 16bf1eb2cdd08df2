"""Conventional baselines: output shapes, parameter counts, option validation."""

from __future__ import annotations

import pytest
import torch

from eqdp_ray.models import ResNet9, WideResNet, count_parameters


@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28), (1, 8)])
def test_resnet9_shapes(channels: int, size: int) -> None:
    model = ResNet9(in_channels=channels, num_classes=7, width=0.25, num_groups=8)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_resnet9_parameter_counts() -> None:
    klause = count_parameters(ResNet9())
    dawnbench = count_parameters(ResNet9(layout=(64, 128, 256, 512)))
    print(f"\nResNet-9 GN (64-128-256-256): {klause:,}; DAWNBench layout (..-512): {dawnbench:,}")
    assert 2_400_000 <= klause <= 2_500_000
    assert 6_500_000 <= dawnbench <= 6_650_000
    assert ResNet9(width=0.5).num_params < klause / 3


@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28), (1, 8)])
def test_wrn_shapes(channels: int, size: int) -> None:
    model = WideResNet(depth=10, width=1, in_channels=channels, num_classes=4)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 4)


def test_wrn16_4_parameter_count() -> None:
    params = count_parameters(WideResNet(depth=16, width=4))
    print(f"\nWRN-16-4 GN: {params:,}")
    assert 2_700_000 <= params <= 2_800_000


def test_group_norm_adapts_to_scaled_widths() -> None:
    model = ResNet9(width=0.3, num_groups=32)  # 19, 38, 77 channels: not multiples of 32
    for module in model.modules():
        if isinstance(module, torch.nn.GroupNorm):
            assert module.num_channels % module.num_groups == 0
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    "factory,kwargs",
    [
        (WideResNet, {"depth": 15}),
        (WideResNet, {"width": 0}),
        (WideResNet, {"activation": "gelu"}),
        (ResNet9, {"layout": (64, 128, 256)}),
        (ResNet9, {"width": 0}),
        (ResNet9, {"num_groups": 0}),
    ],
)
def test_invalid_options(factory, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        factory(**kwargs)
