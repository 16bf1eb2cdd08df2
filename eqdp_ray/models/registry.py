"""Model registry: build models by name, with validated options, counts and symmetries.

Configs and sweeps refer to models by name and a flat dict of options; this module is the one
place that turns those into modules, so typos fail loudly (with the valid choices listed)
instead of silently falling back to defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from eqdp_ray.config.errors import UserError

from .equivariant_resnet import (
    EquivariantResNet9,
    GridTransform,
    grid_symmetries,
    group_label,
    resolve_restriction,
)
from .resnet9 import ResNet9
from .wrn import WideResNet

__all__ = [
    "ModelOptionError",
    "ModelSpec",
    "MODELS",
    "build_model",
    "count_parameters",
    "is_equivariant",
    "model_summary",
    "symmetry_transforms",
    "resolve_options",
    "max_invariance_error",
]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: what it is, its default options, and how to build it."""

    description: str
    defaults: Mapping[str, Any]
    factory: Callable[..., nn.Module]
    equivariant: bool = False


_WRN16_4: dict[str, Any] = {
    "depth": 16,
    "width": 4,
    "num_groups": 16,
    "in_channels": 3,
    "num_classes": 10,
    "activation": "relu",
}

MODELS: dict[str, ModelSpec] = {
    "eq_resnet9": ModelSpec(
        description="E(2)-equivariant ResNet-9 of Hoelzl et al. (2023); default: the paper's CIFAR-10 D4->D2 model",
        defaults={
            "group": "dihedral",
            "order": 4,
            "layout": (16, 32, 64),
            "restrict": "halved",
            "num_groups": 8,
            "in_channels": 3,
            "num_classes": 10,
            "fix_params": True,
            "bandlimit": 3.0,
        },
        factory=EquivariantResNet9,
        equivariant=True,
    ),
    "resnet9": ModelSpec(
        description="ResNet-9 with GroupNorm, Mish and scale norm (Klause et al. 2022), ~2.4M parameters",
        defaults={
            "in_channels": 3,
            "num_classes": 10,
            "width": 1.0,
            "num_groups": 32,
            "layout": (64, 128, 256, 256),
            "scale_norm": True,
        },
        factory=ResNet9,
    ),
    "wrn16_4": ModelSpec(
        description="WRN-16-4 with GroupNorm(16) and ReLU (De et al. 2022), ~2.7M parameters",
        defaults=_WRN16_4,
        factory=WideResNet,
    ),
    "wrn": ModelSpec(
        description="Wide ResNet WRN-depth-width with GroupNorm (De et al. 2022 family); defaults to WRN-16-4",
        defaults=_WRN16_4,
        factory=WideResNet,
    ),
}


class ModelOptionError(UserError, ValueError):
    """A model name or option that the registry cannot build; the message lists the valid ones."""


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ModelOptionError(f"unknown model {name!r}: valid models are {sorted(MODELS)}")
    return MODELS[name]


def resolve_options(name: str, **options: Any) -> dict[str, Any]:
    """The registered defaults of ``name`` updated with ``options``; unknown keys are an error."""
    spec = _spec(name)
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        raise ModelOptionError(
            f"unknown option(s) {unknown} for model {name!r}: valid options are {sorted(spec.defaults)}"
        )
    resolved = dict(spec.defaults)
    resolved.update(options)
    return resolved


def build_model(name: str, **options: Any) -> nn.Module:
    """Build the model registered as ``name`` with its defaults overridden by ``options``.

    Raises ModelOptionError for an unknown name, an unknown option, or an invalid value (unknown
    group, order outside 1..16, a restriction that is not a subgroup, a malformed layout, ...).
    """
    resolved = resolve_options(name, **options)
    try:
        return _spec(name).factory(**resolved)
    except ModelOptionError:
        raise
    except (TypeError, ValueError) as error:  # the constructors check their options with these
        raise ModelOptionError(f"invalid options for model {name!r}: {error}") from error


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters: the dimension DP-SGD clips and adds noise in."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def is_equivariant(name: str) -> bool:
    """Whether the model registered as ``name`` is built from steerable (equivariant) layers."""
    return _spec(name).equivariant


def _unwrap(model: nn.Module) -> nn.Module:
    """The user model inside wrappers (Opacus GradSampleModule, DDP, torch.compile)."""
    seen = 0
    while seen < 8:
        inner = getattr(model, "_module", None) or getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model, seen = inner, seen + 1
    return model


def describe_group(name: str, **options: Any) -> str | None:
    """The symmetry group of a model, e.g. ``"D4->D2"``, without building it; None if not equivariant."""
    return _group_description(name, resolve_options(name, **options))


def _group_description(name: str, options: Mapping[str, Any]) -> str | None:
    if not _spec(name).equivariant:
        return None
    group, order = options["group"], options["order"]
    return group_label(group, order, resolve_restriction(group, order, options["restrict"]))


def model_summary(name: str, **options: Any) -> dict[str, Any]:
    """Build the model and describe it: name, description, trainable parameters, group (e.g. ``"D4->D2"``).

    ``group`` is None for the non-equivariant baselines. Building is needed for the exact
    count; it takes a few seconds for the equivariant model (escnn basis construction).
    """
    resolved = resolve_options(name, **options)
    model = build_model(name, **options)
    return {
        "name": name,
        "description": _spec(name).description,
        "params": count_parameters(model),
        "group": _group_description(name, resolved),
        "equivariant": _spec(name).equivariant,
        "options": resolved,
    }


def symmetry_transforms(model_or_options: nn.Module | Mapping[str, Any]) -> list[GridTransform]:
    """Exact pixel-grid transformations under which the model's logits are invariant.

    Accepts a built model (also wrapped by Opacus or DDP) or an options mapping: either
    ``{"name": ..., **options}`` or bare ``eq_resnet9`` options. Each returned callable maps an
    (..., H, W) tensor to its rotated/flipped version (square inputs for 90-degree rotations).
    The identity is left out; non-equivariant models give an empty list. After a restriction
    only the final subgroup's elements count: D4->D2 yields the 180-degree rotation and both
    axis flips, not the 90-degree rotations.
    """
    if isinstance(model_or_options, nn.Module):
        model = _unwrap(model_or_options)
        if isinstance(model, EquivariantResNet9):
            return model.symmetries()
        return []
    if not isinstance(model_or_options, Mapping):
        raise TypeError(f"expected a model or an options mapping, got {type(model_or_options).__name__}")
    options = dict(model_or_options)
    name = options.pop("name", "eq_resnet9")
    resolved = resolve_options(name, **options)
    if not _spec(name).equivariant:
        return []
    group, order = resolved["group"], resolved["order"]
    sub = resolve_restriction(group, order, resolved["restrict"])
    return grid_symmetries(group, order if sub is None else sub)


def max_invariance_error(model: nn.Module, x: torch.Tensor) -> float:
    """Largest relative change of the logits over ``symmetry_transforms(model)`` (0 if none).

    A convenience for checks after (noisy) training steps, which must not break invariance:
    run model and input in float64 for a meaningful answer (exact models give ~1e-15).
    """
    with torch.no_grad():
        y = model(x)
        scale = y.abs().max().clamp_min(torch.finfo(y.dtype).tiny)
        worst = 0.0
        for transform in symmetry_transforms(model):
            worst = max(worst, float((model(transform(x)) - y).abs().max() / scale))
    return worst
