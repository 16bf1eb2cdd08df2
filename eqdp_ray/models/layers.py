"""Plain-tensor layers for equivariant networks that per-example gradient code can handle.

escnn's own modules (``R2Conv`` and friends) own buffers and wrap tensors in
``GeometricTensor``; Opacus refuses them. Here every layer takes and returns an ordinary
NCHW tensor, and the trainable parameters of a steerable convolution are escnn's basis
coefficients. escnn is used where it is strong: building the steerable kernel basis at
construction time, so that wrong field-type wiring fails there, not after training.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .kernel_symmetry import find_kernel_symmetries, symmetrize
from .norm_groups import norm_group_count

with warnings.catch_warnings():
    # escnn (bundled, see eqdp_ray/_vendor) warns about py3nj, which only SO(3)/O(3) groups need.
    warnings.simplefilter("ignore")
    from eqdp_ray._vendor.escnn import gspaces
    from eqdp_ray._vendor.escnn import nn as enn
    from eqdp_ray._vendor.escnn.nn.modules.basismanager.basisexpansion_blocks import BlocksBasisExpansion
    from eqdp_ray._vendor.escnn.nn.modules.basismanager.basisexpansion_singleblock import (
        SingleBlockBasisExpansion,
        normalize_basis,
    )


def make_gspace(group: str, order: int) -> gspaces.GSpace2D:
    """The escnn 2-D gspace for C_N ("cyclic") or D_N ("dihedral")."""
    if group in ("C", "cyclic"):
        return gspaces.rot2dOnR2(N=order)
    if group in ("D", "dihedral"):
        return gspaces.flipRot2dOnR2(N=order)
    raise ValueError(f"unknown group {group!r}: use 'cyclic' (C_N) or 'dihedral' (D_N)")


def field_sizes(field_type: enn.FieldType) -> list[int]:
    return [r.size for r in field_type.representations]


class _PrivateBlocksExpansion(BlocksBasisExpansion):
    """escnn's block expansion with ordinary identity hashing (see ``_exact_private_expansion``)."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__


class _PrivateSingleBlockExpansion(SingleBlockBasisExpansion):
    """escnn's single-block expansion with ordinary identity hashing."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__


def flush_subnormal(basis: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Zero the entries that would be subnormal in `dtype`: round-off of zeros, ~1e-39 against entries of
    order 0.1, that cost a real computation on them 10-100 cycles each on CPUs that handle subnormals in
    microcode (on an Intel Xeon the per-example basis transpose of the 8x8 layer took 78 ms with 144
    such entries in its basis, 5 ms without; docs/BENCHMARKS.md). Zeroing by magnitude keeps every
    exact equality and sign symmetry of the basis."""
    return torch.where(basis.abs() < torch.finfo(dtype).tiny, torch.zeros((), dtype=basis.dtype), basis)


def _exact_private_expansion(expansion: nn.Module) -> nn.Module:
    """A private copy of an escnn basis expansion, its basis re-sampled in float64.

    Used by every ``SteerableConv2d``.
    Four problems with escnn's expansion as ``R2Conv`` leaves it:

    * escnn caches sampled bases globally and hands the *same* block modules to every layer
      with the same representation pair, across models. ``model.double()`` or ``.to(device)``
      on one model would then change the buffers under every other model. A deep copy makes
      the buffers this layer's own.
    * escnn samples the analytic basis at float32 grid points, so the stored filters are
      equivariant only to ~1e-7 relative, even after ``.double()``. Re-sampling in float64 and
      rounding once to float32 keeps exact equalities exact (rounding is deterministic), so the
      model is invariant to float64 round-off when run in float64, as the tests demand.
    * The basis's grid symmetries (``kernel_symmetry``) hold only to ~1e-16; they are made exact
      and recorded on the block (``kernel_symmetries``), for the per-example rule that uses them.
    * escnn hashes these modules by content (converting tensors to numpy), which
      ``named_modules`` does for every module; inside ``torch.func`` transforms (vmap/grad
      per-example gradients) that fails. The copies get ordinary identity hashing, as every
      other ``nn.Module`` has.
    """
    private = copy.deepcopy(expansion)
    points = torch.as_tensor(private.points, dtype=torch.float64)
    for block in list(private.modules()):
        if type(block) is BlocksBasisExpansion:
            block.__class__ = _PrivateBlocksExpansion
        if type(block) is not SingleBlockBasisExpansion:
            continue
        block.__class__ = _PrivateSingleBlockExpansion
        basis = block.basis.double()  # private: deep-copied with the block (escnn shares the original)
        sampled = basis.sample(points).permute(1, 2, 3, 0)
        sizes = torch.tensor([attr["shape"][0] for attr in block.basis], dtype=sampled.dtype)
        sampled = normalize_basis(sampled, sizes)[block._mask]
        kernel_size = round(sampled.shape[-1] ** 0.5)
        block.kernel_symmetries = find_kernel_symmetries(sampled, kernel_size)
        if block.kernel_symmetries is not None:
            sampled = symmetrize(sampled, block.kernel_symmetries, kernel_size)
        sampled = flush_subnormal(sampled, block.sampled_basis.dtype).to(block.sampled_basis.dtype)
        if sampled.shape != block.sampled_basis.shape or not torch.allclose(
            sampled, block.sampled_basis, atol=1e-5, rtol=1e-4
        ):  # pragma: no cover - guards an escnn change
            raise RuntimeError("float64 re-sampling of the escnn basis does not match escnn's own basis")
        block.sampled_basis = sampled
    return private


class SteerableConv2d(nn.Module):
    """A steerable convolution whose only parameter is the vector of basis coefficients.

    The filter is the linear image of ``weight`` under escnn's basis expansion, so any update
    to ``weight`` (noise included) keeps the layer exactly equivariant.
    """

    def __init__(
        self,
        in_type: enn.FieldType,
        out_type: enn.FieldType,
        kernel_size: int = 3,
        padding: int = 1,
        stride: int = 1,
        frequencies_cutoff: float | None = None,
    ) -> None:
        """`frequencies_cutoff` (per unit radius) sets the basis band limit; None: escnn's default."""
        super().__init__()
        cutoff = None if frequencies_cutoff is None else float(frequencies_cutoff)
        reference = enn.R2Conv(
            in_type, out_type, kernel_size, padding=padding, stride=stride, bias=False, frequencies_cutoff=cutoff
        )
        self.in_type, self.out_type = in_type, out_type
        self.kernel_size, self.padding, self.stride = kernel_size, padding, stride
        # The expansion holds only buffers (the sampled basis): a child, so this module owns
        # exactly one parameter and Opacus treats it as an ordinary trainable layer.
        self.expansion = _exact_private_expansion(reference.basisexpansion)
        self.weight = nn.Parameter(reference.weights.detach().clone())

    def expand(self, coefficients: torch.Tensor | None = None) -> torch.Tensor:
        """The dense filter (out_channels, in_channels, k, k) for the given coefficients."""
        coefficients = self.weight if coefficients is None else coefficients
        k = self.kernel_size
        return self.expansion(coefficients).reshape(self.out_type.size, self.in_type.size, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.expand(), stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return f"{self.in_type.size}->{self.out_type.size} channels, {self.weight.numel()} coefficients"


class FieldGroupNorm(nn.Module):
    """GroupNorm whose groups and affine parameters respect field boundaries.

    Statistics are per example (never across the batch, unlike BatchNorm, which would break
    per-example privacy accounting). Each normalisation group holds whole fields, and scale and
    shift are shared by all channels of a field, so a permutation representation acting inside
    a field commutes with the layer: it stays equivariant.
    """

    def __init__(self, num_fields: int, field_size: int, num_groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        num_groups = norm_group_count(num_fields, num_groups)
        self.num_fields, self.field_size, self.num_groups, self.eps = num_fields, field_size, num_groups, eps
        self.weight = nn.Parameter(torch.ones(num_fields))
        self.bias = nn.Parameter(torch.zeros(num_fields))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight.repeat_interleave(self.field_size)
        shift = self.bias.repeat_interleave(self.field_size)
        return F.group_norm(x, self.num_groups, scale, shift, self.eps)  # one op: its statistics stay on the graph

    def extra_repr(self) -> str:
        return f"fields={self.num_fields}, field_size={self.field_size}, groups={self.num_groups}"


class GroupPool(nn.Module):
    """Max over the channels of each field: regular fields become invariant scalars."""

    def __init__(self, field_size: int) -> None:
        super().__init__()
        self.field_size = field_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, c // self.field_size, self.field_size, h, w).amax(dim=2)
