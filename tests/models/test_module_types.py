"""Per-example gradients: only supported trainable modules, no BatchNorm, no data-dependent state.

The privacy layer registers per-example gradient rules for exactly these module types; any
other module owning a trainable parameter would make DP-SGD fail (or, worse, be silently
wrong), and BatchNorm couples examples through batch statistics.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eqdp_ray.models import build_model, layers

ALLOWED = (layers.SteerableConv2d, layers.FieldGroupNorm, nn.Conv2d, nn.Linear, nn.GroupNorm)

SMALL_MODELS = {
    "eq D4->D2": ("eq_resnet9", {"layout": (8, 12, 12)}),
    "eq C8": ("eq_resnet9", {"group": "cyclic", "order": 8, "restrict": None, "layout": (8, 12, 12)}),
    "eq D1": ("eq_resnet9", {"order": 1, "restrict": None, "layout": (8, 8, 8)}),
    "resnet9": ("resnet9", {"width": 0.25}),
    "wrn16_4": ("wrn16_4", {}),
    "wrn-10-1": ("wrn", {"depth": 10, "width": 1}),
}


@pytest.fixture(scope="module", params=sorted(SMALL_MODELS))
def model(request) -> nn.Module:
    name, options = SMALL_MODELS[request.param]
    torch.manual_seed(0)
    return build_model(name, **options)


def test_no_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        assert not isinstance(module, nn.modules.batchnorm._BatchNorm), module
        assert "BatchNorm" not in type(module).__name__


def test_trainable_modules_are_supported(model: nn.Module) -> None:
    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    assert owners
    for module in owners:
        assert type(module) in ALLOWED, f"{type(module).__name__} owns parameters"
    # Every parameter is reached through an allowed owner.
    owned = sum(p.numel() for m in owners for p in m.parameters(recurse=False))
    assert owned == sum(p.numel() for p in model.parameters())


def test_buffers_do_not_depend_on_data(model: nn.Module) -> None:
    before = {name: buf.clone() for name, buf in model.named_buffers()}
    model.train()
    channels = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, layers.SteerableConv2d)))
    in_channels = channels.in_channels if isinstance(channels, nn.Conv2d) else channels.in_type.size
    model(torch.randn(3, in_channels, 16, 16))
    for name, buf in model.named_buffers():
        assert torch.equal(buf, before[name]), name


def test_examples_are_independent(model: nn.Module) -> None:
    """An example's logits do not depend on the rest of the batch (no cross-batch statistics)."""
    model.train()
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, layers.SteerableConv2d)))
    in_channels = first.in_channels if isinstance(first, nn.Conv2d) else first.in_type.size
    x = torch.randn(4, in_channels, 16, 16)
    with torch.no_grad():
        together = model(x)
        alone = model(x[:1])
    torch.testing.assert_close(together[:1], alone, rtol=1e-4, atol=1e-5)
