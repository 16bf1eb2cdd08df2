"""E(2)-equivariant ResNet-9 built only from layers that per-example gradient code supports.

This re-implements the equivariant ResNet-9 of Hölzl, Rueckert & Kaissis, "Equivariant
Differentially Private Deep Learning: Why DP-SGD Needs Sparser Models" (AISec'23,
arXiv 2301.13104). Their reference uses escnn-style modules end to end (``GeometricTensor``
inputs, escnn GroupNorm, biases inside ``R2Conv``); Opacus cannot compute per-example
gradients for those. Here every trainable module is a :class:`layers.SteerableConv2d`,
:class:`layers.FieldGroupNorm` or :class:`torch.nn.Linear`; everything else is parameter free.

Architecture (widths in *regular fields*; ``|G|`` channels each)::

    conv1  lift: trivial x in_channels -> c0 fields      conv3x3, Mish, FieldGroupNorm
    conv2  c0 -> c1 fields                               conv3x3, Mish, FieldGroupNorm, maxpool/2
    res1   2 x (c1 -> c1 block), added to conv2's output
    scale_norm1                                          parameter-free field group norm
    conv3  c1 -> c2 fields                               conv3x3, Mish, FieldGroupNorm, maxpool/2
    -- restriction to the subgroup H (identity on the tensor) --
    conv4  c2 (restricted) -> c2 H-regular fields        conv3x3, Mish, FieldGroupNorm, maxpool/2
    res2   2 x (c2 -> c2 block), added to conv4's output
    scale_norm2                                          parameter-free field group norm
    group pool (max over each field) -> global average pool -> Linear(c2, num_classes)

The field counts follow the paper's parameter-fixing rule (``fix_params=True``): a layout width
``w`` becomes ``int(w * sqrt(1.5 * |G|) / |G|)`` regular fields, so that the number of
parameters stays roughly constant across group orders. The last stage (conv3, conv4, res2)
uses the order of the group it ends up equivariant to, as in the reference.

Deviations from the reference, all forced by per-example gradients or exact invariance:

* No convolution bias (``SteerableConv2d`` has none). Instead each block's group norm carries a
  per-field scale and shift (``FieldGroupNorm``); the reference norm has no affine parameters.
* Head: global average pooling instead of the reference's 2x2 adaptive pooling, whose flattened
  cells are permuted by rotations, so the reference's logits are not invariant.
* Pooling on odd feature maps uses a centred 3x3/stride-2 window (see ``SymmetricMaxPool2d``);
  the reference's 2x2 floor pooling drops a border row and breaks exactness there. Even sizes
  (all of CIFAR-10's) pool exactly as in the reference.

With the paper's CIFAR-10 setting (D4, last stage restricted to D2, layout 16/32/64) this model
has 254,706 trainable parameters against the reference's 255,675 (-0.38 %): identical steerable
filters (253,904 coefficients), 402 norm parameters instead of 201 biases, and a 400-parameter
head instead of 1,570.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import layers
from .norm_groups import norm_group_count

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # escnn's py3nj warning; only 3-D groups need it
    from eqdp_ray._vendor.escnn import gspaces
    from eqdp_ray._vendor.escnn import nn as enn

__all__ = [
    "EquivariantResNet9",
    "SymmetricMaxPool2d",
    "FieldStandardize",
    "GridTransform",
    "GROUPS",
    "MAX_ORDER",
    "FIX_CONSTANT",
    "group_order",
    "group_name",
    "regular_fields",
    "resolve_field_groups",
    "group_label",
    "resolve_restriction",
    "grid_symmetries",
]

GROUPS: tuple[str, ...] = ("cyclic", "dihedral")
MAX_ORDER = 16
# The paper's heuristic constant in the parameter-fixing rule (see ``regular_fields``).
FIX_CONSTANT = 1.5
# The reference's frequency band limit for 3x3 filters: frequencies up to 3 * radius. escnn's
# own default keeps fewer basis filters (190k instead of 254k coefficients for the paper model).
REFERENCE_BANDLIMIT = 3.0

Restrict = int | str | None


# --------------------------------------------------------------------------------------------
# Group bookkeeping
# --------------------------------------------------------------------------------------------


def _check_group(group: str, order: int) -> None:
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}: valid groups are {list(GROUPS)}")
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order must be an integer in 1..{MAX_ORDER}, got {order!r}")


def group_order(group: str, order: int) -> int:
    """|G| of C_N (N) or D_N (2N): the size of a regular field, hence of the width rule."""
    _check_group(group, order)
    return order if group == "cyclic" else 2 * order


def group_name(group: str, order: int) -> str:
    """Short name such as ``"C8"`` or ``"D4"`` for summaries and logs."""
    _check_group(group, order)
    return f"{'C' if group == 'cyclic' else 'D'}{order}"


def group_label(group: str, order: int, restricted_order: int | None) -> str:
    """``"D4->D2"`` for a last stage restricted to D2, ``"C8"`` without restriction: the one spelling
    used by summaries, result records and the results store's ``group`` column."""
    full = group_name(group, order)
    return full if restricted_order is None else f"{full}->{group_name(group, restricted_order)}"


def resolve_restriction(group: str, order: int, restrict: Restrict) -> int | None:
    """The rotation order M of the last stage's subgroup (C_M in C_N, D_M in D_N), or None.

    ``restrict`` is None (no restriction), an integer M dividing N, or ``"halved"`` (M = N/2, the
    reference's name for the paper's CIFAR-10 setting). ``restrict == order`` is a no-op and
    returns None, so that equal settings build equal models.
    """
    _check_group(group, order)
    if restrict is None:
        return None
    if restrict == "halved":
        if order % 2:
            raise ValueError(
                f"restrict='halved' needs an even order, got {group_name(group, order)}; "
                "pass restrict=None or an integer divisor of the order"
            )
        restrict = order // 2
    if isinstance(restrict, bool) or not isinstance(restrict, int):
        raise ValueError(f"restrict must be None, 'halved' or an integer divisor of the order, got {restrict!r}")
    if restrict < 1 or order % restrict:
        divisors = [m for m in range(1, order + 1) if order % m == 0]
        raise ValueError(
            f"restrict={restrict} is not a subgroup of {group_name(group, order)}: "
            f"the rotation order of a subgroup must divide {order}; valid values are {divisors}"
        )
    return None if restrict == order else restrict


def regular_fields(width: int, order_of_group: int, fix_params: bool = True) -> int:
    """Number of regular fields for a layout width: the paper's parameter-fixing rule.

    A regular field has |G| channels and a G-equivariant filter between two of them has about
    |G| times fewer free parameters than a dense one, so ``w / sqrt(|G|)`` fields keep the
    parameter count roughly constant across groups; the reference scales that by
    ``sqrt(1.5)`` (found heuristically): ``int(w * sqrt(1.5 |G|) / |G|)``, at least 1.
    Without ``fix_params`` the width is used as the field count directly.
    """
    if not fix_params:
        return max(1, int(width))
    fields = int(width * math.sqrt(order_of_group * FIX_CONSTANT) / order_of_group)
    if fields < 1:
        warnings.warn(
            f"layout width {width} gives no regular field of a group of order {order_of_group}; using 1",
            stacklevel=2,
        )
        fields = 1
    return fields


def resolve_field_groups(num_fields: int, requested: int) -> int:
    """Normalisation groups for ``num_fields`` fields: the one rule of `norm_group_count`."""
    return norm_group_count(num_fields, requested)


# --------------------------------------------------------------------------------------------
# Exact pixel-grid symmetries
# --------------------------------------------------------------------------------------------


class GridTransform:
    """A named exact symmetry of the pixel grid acting on the last two (H, W) dimensions."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.name, self._fn = name, fn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def __repr__(self) -> str:
        return f"GridTransform({self.name})"


_ROT90 = GridTransform("rot90", lambda x: torch.rot90(x, 1, dims=(-2, -1)))
_ROT180 = GridTransform("rot180", lambda x: torch.rot90(x, 2, dims=(-2, -1)))
_ROT270 = GridTransform("rot270", lambda x: torch.rot90(x, 3, dims=(-2, -1)))
_FLIP_W = GridTransform("flip_w", lambda x: torch.flip(x, dims=(-1,)))
_FLIP_H = GridTransform("flip_h", lambda x: torch.flip(x, dims=(-2,)))
_TRANSPOSE = GridTransform("transpose", lambda x: x.transpose(-2, -1))
_ANTITRANSPOSE = GridTransform("antitranspose", lambda x: torch.rot90(x, 2, dims=(-2, -1)).transpose(-2, -1))

# escnn's D_N reflection (flipRot2dOnR2's default axis pi/2, kept by the (0, M) subgroups used
# for restriction) acts on an NCHW tensor as a flip of the W axis; the D1 and D3 tests in
# tests/models/test_equivariant_resnet.py check this numerically.
_GENERATOR_FLIP = _FLIP_W


def grid_symmetries(group: str, order: int) -> list[GridTransform]:
    """The non-identity elements of C_N / D_N that map the square pixel grid onto itself.

    Only rotations by multiples of 90 degrees and the axis/diagonal flips are exact on a pixel
    grid, so C8 yields the 90-degree rotations, D6 the 180-degree rotation and both axis flips,
    and an odd N only the flip (D_N) or nothing (C_N). The identity is left out so that an
    empty list means "no exact symmetry to test".
    """
    _check_group(group, order)
    rotations: list[GridTransform] = []
    if order % 4 == 0:
        rotations = [_ROT90, _ROT180, _ROT270]
    elif order % 2 == 0:
        rotations = [_ROT180]
    if group == "cyclic":
        return rotations
    if order % 4 == 0:
        return rotations + [_FLIP_H, _FLIP_W, _TRANSPOSE, _ANTITRANSPOSE]
    if order % 2 == 0:
        return rotations + [_FLIP_H, _FLIP_W]
    return [_GENERATOR_FLIP]


# --------------------------------------------------------------------------------------------
# Parameter-free helper modules
# --------------------------------------------------------------------------------------------


class SymmetricMaxPool2d(nn.Module):
    """Stride-2 max pooling whose windows are mapped onto each other by rotations and flips.

    On an even side, 2x2 windows tile the axis and reversing it maps window k onto n/2-1-k:
    exactly ``MaxPool2d(2)``. On an odd side, 2x2 floor pooling drops the last row, which a
    rotation moves to the first, so equivariance breaks (28 -> 14 -> 7 -> 3 on MNIST). There we
    use 3-wide windows centred on the even positions 0, 2, ..., n-1 (padding 1 with -inf), a
    set that reversal maps onto itself. Output side: ceil(n / 2) either way.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        kernel = (2 + h % 2, 2 + w % 2)
        padding = (h % 2, w % 2)
        return F.max_pool2d(x, kernel_size=kernel, stride=2, padding=padding)


class FieldStandardize(nn.Module):
    """Group norm without affine parameters (the reference's "scale norm" after a residual sum).

    Groups hold whole fields (channels are field-major, fields are contiguous), so statistics are
    invariant under the group acting inside fields, and they are per example, never across the
    batch. No parameters: nothing for per-example gradients to handle.
    """

    def __init__(self, num_fields: int, field_size: int, num_groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_fields, self.field_size, self.eps = num_fields, field_size, eps
        self.num_groups = resolve_field_groups(num_fields, num_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, eps=self.eps)

    def extra_repr(self) -> str:
        return f"fields={self.num_fields}, field_size={self.field_size}, groups={self.num_groups}"


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def _steerable_conv(in_type: enn.FieldType, out_type: enn.FieldType, bandlimit: float | None) -> layers.SteerableConv2d:
    """A 3x3 ``SteerableConv2d`` with the reference's band limit (frequencies up to 3 r)."""
    return layers.SteerableConv2d(in_type, out_type, kernel_size=3, padding=1, frequencies_cutoff=bandlimit)


class EquivariantConvBlock(nn.Sequential):
    """conv3x3 -> Mish -> field group norm [-> stride-2 max pool], the reference's block order.

    Mish acts channel-wise, which commutes with the permutation matrices of regular fields.
    """

    def __init__(
        self,
        in_type: enn.FieldType,
        out_type: enn.FieldType,
        num_groups: int,
        pool: bool = False,
        bandlimit: float | None = REFERENCE_BANDLIMIT,
    ) -> None:
        field_size = out_type.representations[0].size
        num_fields = len(out_type.representations)
        super().__init__(
            _steerable_conv(in_type, out_type, bandlimit),
            nn.Mish(),
            layers.FieldGroupNorm(num_fields, field_size, resolve_field_groups(num_fields, num_groups)),
            SymmetricMaxPool2d() if pool else nn.Identity(),
        )
        self.in_type, self.out_type = in_type, out_type


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def _as_triple(value: int | Sequence[int], what: str) -> tuple[int, int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value, value)
    try:
        triple = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{what} must be an int or 3 positive ints, got {value!r}") from None
    if len(triple) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in triple):
        raise ValueError(f"{what} must be an int or 3 positive ints, got {value!r}")
    return triple  # type: ignore[return-value]


class EquivariantResNet9(nn.Module):
    """The paper's equivariant ResNet-9, exactly invariant to the grid symmetries of its group.

    Args:
        group: ``"cyclic"`` (C_N, rotations) or ``"dihedral"`` (D_N, rotations and flips).
        order: N, the number of rotations, 1..16.
        layout: widths of the three stages before the parameter-fixing rule.
        restrict: rotation order M (dividing N) of the subgroup the last stage is restricted
            to: C_M inside C_N, or D_M inside D_N keeping D_N's reflection (escnn id ``(0, M)``;
            ``(None, M)`` would be the rotation-only C_M). ``"halved"`` (default, the paper's
            CIFAR-10 D4 -> D2) means N/2; None means no restriction. After a restriction the
            whole network is only invariant to the subgroup.
        num_groups: normalisation groups per stage (int or three ints); adapted per layer to a
            divisor of the field count, see ``resolve_field_groups``.
        in_channels: input channels, each a trivial (scalar) field.
        num_classes: number of logits.
        fix_params: apply the parameter-fixing rule (paper: yes); else layout = field counts.
        bandlimit: steerable basis frequency cut-off per unit radius (reference: 3); None uses
            escnn's default, which gives fewer coefficients.
    """

    def __init__(
        self,
        group: str = "dihedral",
        order: int = 4,
        layout: Sequence[int] = (16, 32, 64),
        restrict: Restrict = "halved",
        num_groups: int | Sequence[int] = 8,
        in_channels: int = 3,
        num_classes: int = 10,
        fix_params: bool = True,
        bandlimit: float | None = REFERENCE_BANDLIMIT,
    ) -> None:
        super().__init__()
        _check_group(group, order)
        widths = _as_triple(layout, "layout")
        groups = _as_triple(num_groups, "num_groups")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if bandlimit is not None and not bandlimit > 0:
            raise ValueError(f"bandlimit must be positive or None, got {bandlimit!r}")
        sub_order = resolve_restriction(group, order, restrict)

        self.group, self.order, self.restrict = group, order, sub_order
        self.final_order = order if sub_order is None else sub_order

        gspace = layers.make_gspace(group, order)
        full = group_order(group, order)
        last = group_order(group, self.final_order)
        c0 = regular_fields(widths[0], full, fix_params)
        c1 = regular_fields(widths[1], full, fix_params)
        c2 = regular_fields(widths[2], last, fix_params)  # the reference sizes conv3 like the last stage
        self.fields = (c0, c1, c2)

        def regular(space: gspaces.GSpace2D, n: int) -> enn.FieldType:
            return enn.FieldType(space, [space.regular_repr] * n)

        trivial = enn.FieldType(gspace, [gspace.trivial_repr] * in_channels)
        t0, t1, t2 = regular(gspace, c0), regular(gspace, c1), regular(gspace, c2)

        self.conv1 = EquivariantConvBlock(trivial, t0, groups[0], bandlimit=bandlimit)
        self.conv2 = EquivariantConvBlock(t0, t1, groups[1], pool=True, bandlimit=bandlimit)
        self.res1 = nn.Sequential(
            EquivariantConvBlock(t1, t1, groups[1], bandlimit=bandlimit),
            EquivariantConvBlock(t1, t1, groups[1], bandlimit=bandlimit),
        )
        self.scale_norm1 = FieldStandardize(c1, full, groups[1])
        self.conv3 = EquivariantConvBlock(t1, t2, groups[2], pool=True, bandlimit=bandlimit)

        if sub_order is None:
            restricted, subspace = t2, gspace
        else:
            # The restriction is the identity on the tensor: the same channels are read as a
            # representation of the subgroup, and conv4 only needs to be H-equivariant.
            subgroup_id = (0, sub_order) if group == "dihedral" else sub_order
            restricted = t2.restrict(subgroup_id)
            subspace = restricted.gspace
        t3 = regular(subspace, c2)
        self.conv4 = EquivariantConvBlock(restricted, t3, groups[2], pool=True, bandlimit=bandlimit)
        self.res2 = nn.Sequential(
            EquivariantConvBlock(t3, t3, groups[2], bandlimit=bandlimit),
            EquivariantConvBlock(t3, t3, groups[2], bandlimit=bandlimit),
        )
        self.scale_norm2 = FieldStandardize(c2, last, groups[2])
        self.group_pool = layers.GroupPool(last)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c2, num_classes)

    @property
    def group_description(self) -> str:
        """``"D4->D2"`` for a restricted model, ``"C8"`` otherwise."""
        return group_label(self.group, self.order, self.restrict)

    @property
    def num_params(self) -> int:
        """Trainable parameters (what DP-SGD clips and noises)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def symmetries(self) -> list[GridTransform]:
        """Exact non-identity pixel-grid symmetries of the logits (those of the final group)."""
        return grid_symmetries(self.group, self.final_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.res1(x) + x
        x = self.scale_norm1(x)
        x = self.conv3(x)
        x = self.conv4(x)
        x = self.res2(x) + x
        x = self.scale_norm2(x)
        x = self.group_pool(x)
        x = self.flatten(self.global_pool(x))
        return self.classifier(x)
