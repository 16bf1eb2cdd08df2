"""The grid symmetries of a sampled steerable kernel basis, found numerically and made exact.

For a group whose elements map the square kernel grid onto itself (D_N and C_N with N dividing 4)
and fields whose representations permute channels (regular ones, and their restrictions), every
equivariant kernel satisfies K[g.o, g.i, g.s] = K[o, i, s]. So output channel o's slice of each
basis element is output channel 0's slice with its input channels permuted and its grid points
moved by a grid symmetry. escnn's sampled bases satisfy this to ~1e-16 (round-off of its change
of basis); ``symmetrize`` makes it exact, so that code relying on it (the per-example rule that
sums a layer's filter gradient over these symmetries before the basis transpose,
``eqdp_ray.privacy.grad_samplers``) computes exactly what the dense transpose would.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

# The 8 symmetries of the square grid, as integer maps of (row, column) offsets from the centre.
GRID_MAPS: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((1, 0), (0, 1)),
    ((0, -1), (1, 0)),
    ((-1, 0), (0, -1)),
    ((0, 1), (-1, 0)),
    ((-1, 0), (0, 1)),
    ((1, 0), (0, -1)),
    ((0, 1), (1, 0)),
    ((0, -1), (-1, 0)),
)

# Entries that differ by less than this (relative to the largest) count as equal when symmetries
# are searched for: escnn's asymmetry is ~1e-16, distinct entries differ by far more.
MATCH_TOLERANCE = 1e-9


@dataclass(frozen=True)
class KernelSymmetry:
    """How output channel o's slice of a basis is channel 0's:
    ``basis[:, o, inputs[i], grid_permutation(grid_map)[s]] == basis[:, 0, i, s]``."""

    grid_map: tuple[tuple[int, int], tuple[int, int]]
    inputs: tuple[int, ...]


@functools.lru_cache(maxsize=256)
def grid_permutation(grid_map: tuple[tuple[int, int], tuple[int, int]], size: int) -> torch.Tensor:
    """For each point v of a size x size grid (row-major), the flat index of grid_map(v) about the centre."""
    (a, b), (c, d) = grid_map
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r, q = 2 * rows - (size - 1), 2 * cols - (size - 1)  # doubled centred coordinates: integers for any size
    mapped_r, mapped_q = (a * r + b * q + size - 1) // 2, (c * r + d * q + size - 1) // 2
    return (mapped_r * size + mapped_q).reshape(-1)


def find_kernel_symmetries(basis: torch.Tensor, kernel_size: int) -> tuple[KernelSymmetry, ...] | None:
    """One symmetry per output channel of a (b, out, in, k*k) basis, or None where some channel has none."""
    _, outputs, inputs, points = basis.shape
    if points != kernel_size**2:
        return None
    tolerance = MATCH_TOLERANCE * float(basis.abs().max())
    reference = basis[:, 0]
    found = []
    for o in range(outputs):
        symmetry = None
        for grid_map in GRID_MAPS:
            moved = basis[:, o][:, :, grid_permutation(grid_map, kernel_size)]
            matches = [
                [j for j in range(inputs) if (moved[:, j] - reference[:, i]).abs().max() <= tolerance]
                for i in range(inputs)
            ]
            permutation = tuple(m[0] for m in matches if len(m) == 1)
            if len(permutation) == inputs and sorted(permutation) == list(range(inputs)):
                symmetry = KernelSymmetry(grid_map, permutation)
                break
        if symmetry is None:
            return None
        found.append(symmetry)
    return tuple(found)


def symmetrize(basis: torch.Tensor, symmetries: tuple[KernelSymmetry, ...], kernel_size: int) -> torch.Tensor:
    """The basis with every output channel's slice rebuilt from channel 0's: the symmetries hold exactly."""
    exact = torch.empty_like(basis)
    for o, symmetry in enumerate(symmetries):
        inputs = torch.tensor(symmetry.inputs)[:, None]
        points = grid_permutation(symmetry.grid_map, kernel_size)[None, :]
        exact[:, o, inputs, points] = basis[:, 0]
    return exact


def symmetries_hold(basis: torch.Tensor, symmetries: tuple[KernelSymmetry, ...], kernel_size: int) -> bool:
    """Whether the symmetries hold bit for bit (a loaded checkpoint may carry an unsymmetrized basis)."""
    return all(
        torch.equal(basis[:, o][:, list(s.inputs)][:, :, grid_permutation(s.grid_map, kernel_size)], basis[:, 0])
        for o, s in enumerate(symmetries)
    )
