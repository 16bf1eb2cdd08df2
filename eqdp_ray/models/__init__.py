"""Models for DP-SGD: the equivariant ResNet-9 of Hoelzl et al. (2023) and conventional baselines.

Every trainable module is a ``layers.SteerableConv2d``, ``layers.FieldGroupNorm``,
``nn.Conv2d``, ``nn.Linear`` or ``nn.GroupNorm`` (per-example gradients); no BatchNorm.
Build models through :func:`build_model`.
"""

from .equivariant_resnet import EquivariantResNet9, GridTransform, grid_symmetries
from .registry import (
    MODELS,
    ModelOptionError,
    ModelSpec,
    build_model,
    count_parameters,
    describe_group,
    is_equivariant,
    max_invariance_error,
    model_summary,
    resolve_options,
    symmetry_transforms,
)
from .resnet9 import ResNet9
from .wrn import WideResNet

__all__ = [
    "EquivariantResNet9",
    "GridTransform",
    "MODELS",
    "ModelOptionError",
    "ModelSpec",
    "ResNet9",
    "WideResNet",
    "build_model",
    "count_parameters",
    "describe_group",
    "grid_symmetries",
    "is_equivariant",
    "max_invariance_error",
    "model_summary",
    "resolve_options",
    "symmetry_transforms",
]
