"""Grid symmetries of sampled steerable bases: found for D_N / C_N with N | 4, exact after symmetrizing."""

import pytest
import torch

from eqdp_ray._vendor.escnn import nn as enn
from eqdp_ray.models.kernel_symmetry import (
    GRID_MAPS,
    find_kernel_symmetries,
    grid_permutation,
    symmetries_hold,
    symmetrize,
)
from eqdp_ray.models.layers import SteerableConv2d, make_gspace


def test_grid_permutation_moves_points_about_the_centre():
    quarter_turn = ((0, -1), (1, 0))  # (row, col) -> (-col, row)
    assert grid_permutation(quarter_turn, 3).tolist() == [6, 3, 0, 7, 4, 1, 8, 5, 2]
    for size in (3, 4, 5):
        for grid_map in GRID_MAPS:
            assert sorted(grid_permutation(grid_map, size).tolist()) == list(range(size * size))


def single_block_of(expansion):
    """The one basis block of an expansion with one representation pair (escnn's or a SteerableConv2d's)."""
    (pair,) = expansion._representations_pairs
    return getattr(expansion, f"block_expansion_{expansion._escape_pair(pair)}")


@pytest.mark.parametrize("group,order,found", [("dihedral", 4, True), ("cyclic", 4, True), ("cyclic", 8, False)])
def test_layers_record_exact_symmetries_where_the_group_maps_the_grid(group, order, found):
    gspace = make_gspace(group, order)
    regular = enn.FieldType(gspace, 2 * [gspace.regular_repr])
    layer = SteerableConv2d(regular, regular)
    block = single_block_of(layer.expansion)
    assert (block.kernel_symmetries is not None) == found
    escnn_basis = enn.R2Conv(regular, regular, 3, padding=1).basisexpansion
    original = single_block_of(escnn_basis).sampled_basis
    torch.testing.assert_close(block.sampled_basis, original, rtol=0, atol=1e-6)
    if found:
        assert len(block.kernel_symmetries) == gspace.regular_repr.size
        assert symmetries_hold(block.sampled_basis, block.kernel_symmetries, 3)


def test_symmetrizing_removes_round_off_and_refuses_real_asymmetry():
    torch.manual_seed(0)
    gspace = make_gspace("dihedral", 4)
    regular = enn.FieldType(gspace, [gspace.regular_repr])
    exact = single_block_of(SteerableConv2d(regular, regular).expansion).sampled_basis.double()
    noisy = exact + 1e-14 * torch.randn_like(exact)  # escnn's float64 change of basis leaves ~1e-16
    symmetries = find_kernel_symmetries(noisy, 3)
    assert symmetries is not None and not symmetries_hold(noisy, symmetries, 3)
    repaired = symmetrize(noisy, symmetries, 3)
    assert symmetries_hold(repaired, symmetries, 3) and float((repaired - exact).abs().max()) < 1e-13
    broken = exact.clone()
    broken[0, 1, 0, 0] += 1e-3
    assert find_kernel_symmetries(broken, 3) is None


@torch.no_grad()
def test_a_layer_with_symmetries_is_equivariant_to_them():
    """The premise of the symmetries: a quarter turn of the input turns each output channel and permutes
    the channels of each regular field."""
    torch.manual_seed(0)
    gspace = make_gspace("cyclic", 4)
    trivial, regular = enn.FieldType(gspace, [gspace.trivial_repr]), enn.FieldType(gspace, [gspace.regular_repr])
    layer = SteerableConv2d(trivial, regular).double()
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    out, turned = layer(x), layer(torch.rot90(x, 1, (2, 3)))
    for d in range(4):
        errors = [float((torch.rot90(out[0, c], 1) - turned[0, d]).abs().max()) for c in range(4)]
        assert min(errors) < 1e-12, errors
