"""Conventional ResNet-9 with GroupNorm and Mish: the non-equivariant DP-SGD baseline.

This is the ResNet-9 that Klause et al. (2022, "Differentially private training of residual
networks with scale normalisation"; TUM-AIMED/PrivateModelArchitectures) use for DP-SGD on
CIFAR-10, and whose topology the equivariant ResNet-9 copies, so the two differ only in the
convolutions::

    conv1  in -> c0          conv3x3, GroupNorm, Mish
    conv2  c0 -> c1          conv3x3, GroupNorm, Mish, maxpool/2
    res1   2 x (c1 -> c1) blocks, added to conv2's output; GroupNorm ("scale norm")
    conv3  c1 -> c2          conv3x3, GroupNorm, Mish, maxpool/2
    conv4  c2 -> c3          conv3x3, GroupNorm, Mish, maxpool/2
    res2   2 x (c3 -> c3) blocks, added to conv4's output; GroupNorm ("scale norm")
    adaptive max pool to 2x2 -> Linear(4 c3, num_classes)

The default layout (64, 128, 256, 256) is Klause et al.'s (about 2.4M parameters);
``layout=(64, 128, 256, 512)`` is the original DAWNBench ResNet-9 (about 6.6M). GroupNorm
replaces BatchNorm because DP-SGD needs per-example gradients, which batch statistics would
couple; all trainable modules are ``nn.Conv2d``, ``nn.GroupNorm`` and ``nn.Linear``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .norm_groups import norm_group_count

__all__ = ["ResNet9", "group_norm", "scaled_width"]


def scaled_width(channels: int, width: float) -> int:
    """A layout width multiplied by ``width``, at least 1."""
    return max(1, int(round(channels * width)))


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    """GroupNorm with ``num_groups`` adapted by `norm_group_count` (the rule the equivariant model uses).

    Scaled widths need not be multiples of the requested count; adapting beats failing.
    """
    return nn.GroupNorm(norm_group_count(channels, num_groups), channels)


def _conv_block(in_channels: int, out_channels: int, num_groups: int, pool: bool = False) -> nn.Sequential:
    """conv3x3 (no bias: the norm's shift replaces it) -> GroupNorm -> Mish [-> maxpool/2]."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        group_norm(out_channels, num_groups),
        nn.Mish(),
        nn.MaxPool2d(2) if pool else nn.Identity(),
    )


class ResNet9(nn.Module):
    """ResNet-9 with GroupNorm, Mish and scale norms after the residual sums.

    Args:
        in_channels: input channels.
        num_classes: number of logits.
        width: multiplier applied to every layout width.
        num_groups: GroupNorm groups (adapted down to a divisor of each layer's channels).
        layout: channels of conv1, conv2/res1, conv3, conv4/res2.
        scale_norm: GroupNorm after each residual sum (Klause et al.: helps under DP-SGD).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        width: float = 1.0,
        num_groups: int = 32,
        layout: Sequence[int] = (64, 128, 256, 256),
        scale_norm: bool = True,
    ) -> None:
        super().__init__()
        layout = tuple(layout)
        if len(layout) != 4 or not all(isinstance(c, int) and c >= 1 for c in layout):
            raise ValueError(f"layout must be 4 positive ints (conv1, conv2/res1, conv3, conv4/res2), got {layout!r}")
        if not width > 0:
            raise ValueError(f"width must be positive, got {width!r}")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        c0, c1, c2, c3 = (scaled_width(c, width) for c in layout)
        self.conv1 = _conv_block(in_channels, c0, num_groups)
        self.conv2 = _conv_block(c0, c1, num_groups, pool=True)
        self.res1 = nn.Sequential(_conv_block(c1, c1, num_groups), _conv_block(c1, c1, num_groups))
        self.scale_norm1: nn.Module = group_norm(c1, num_groups) if scale_norm else nn.Identity()
        self.conv3 = _conv_block(c1, c2, num_groups, pool=True)
        self.conv4 = _conv_block(c2, c3, num_groups, pool=True)
        self.res2 = nn.Sequential(_conv_block(c3, c3, num_groups), _conv_block(c3, c3, num_groups))
        self.scale_norm2: nn.Module = group_norm(c3, num_groups) if scale_norm else nn.Identity()
        self.pool = nn.AdaptiveMaxPool2d((2, 2))
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(4 * c3, num_classes)

    @property
    def num_params(self) -> int:
        """Trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x))
        x = self.scale_norm1(self.res1(x) + x)
        x = self.conv4(self.conv3(x))
        x = self.scale_norm2(self.res2(x) + x)
        return self.classifier(self.flatten(self.pool(x)))
