"""Wide ResNet with GroupNorm: the De et al. (2022) DP-SGD baseline family (WRN-16-4 on CIFAR-10).

De, Berrada, Hayes, Smith & Balle, "Unlocking High-Accuracy Differentially Private Image
Classification through Scale", train a pre-activation WRN-16-4 with GroupNorm (16 groups) and
ReLU instead of BatchNorm. Layout for depth d and widen factor k, n = (d - 4) / 6 blocks per
stage::

    conv3x3 in -> 16
    stage 1: n blocks, 16k channels, stride 1
    stage 2: n blocks, 32k channels, stride 2 (first block)
    stage 3: n blocks, 64k channels, stride 2 (first block)
    GroupNorm -> ReLU -> global average pool -> Linear(64k, num_classes)

    block: GN -> ReLU -> conv3x3(stride) -> GN -> ReLU -> conv3x3, plus the identity, or a 1x1
    conv of the pre-activated input when the shape changes.

Deviation: De et al. use scaled weight standardisation in every convolution. A weight transform
inside the forward pass is not a plain ``nn.Conv2d``, whose per-example gradient rule the
privacy layer relies on, so it is left out; convolutions have no bias (the norms' shifts take
that role). Trainable modules: ``nn.Conv2d``, ``nn.GroupNorm``, ``nn.Linear`` only.
"""

from __future__ import annotations

import torch
from torch import nn

from .resnet9 import group_norm

__all__ = ["WideResNet", "ACTIVATIONS"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "mish": nn.Mish}


class _PreActBlock(nn.Module):
    """Pre-activation residual block; the shortcut conv sees the pre-activated input (as in WRN)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, num_groups: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, num_groups)
        self.act1 = act()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm2 = group_norm(out_channels, num_groups)
        self.act2 = act()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.norm1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.act2(self.norm2(out)))
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-width with GroupNorm, no BatchNorm.

    Args:
        depth: total depth; (depth - 4) must be divisible by 6 (16, 22, 28, 40, ...).
        width: widen factor k.
        num_groups: GroupNorm groups (De et al.: 16), adapted to a divisor of the channels.
        in_channels: input channels.
        num_classes: number of logits.
        activation: ``"relu"`` (De et al.) or ``"mish"``.
    """

    def __init__(
        self,
        depth: int = 16,
        width: int = 4,
        num_groups: int = 16,
        in_channels: int = 3,
        num_classes: int = 10,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width (widen factor) must be a positive int, got {width!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: valid are {sorted(ACTIVATIONS)}")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        act = ACTIVATIONS[activation]
        n = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        channels = 16
        for stage, out_channels in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_PreActBlock(channels, out_channels, stride, num_groups, act))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.norm = group_norm(channels, num_groups)
        self.act = act()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)

    @property
    def num_params(self) -> int:
        """Trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = self.act(self.norm(x))
        return self.classifier(self.flatten(self.pool(x)))
