"""The equivariant ResNet-9: the paper's parameter count and exact invariance of the logits.

Invariance is checked in float64, where an exactly equivariant network changes its logits only
by round-off (~1e-15 relative); a broken one changes them by O(1e-1). Only transformations that
are elements of the *final* group count: after restricting D4 to D2 in the last stage, the
network is invariant to the 180-degree rotation and the two axis flips, but not to 90-degree
rotations (checked to actually change the logits, so the test is not vacuous).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from eqdp_ray.models import layers
from eqdp_ray.models.equivariant_resnet import (
    EquivariantResNet9,
    SymmetricMaxPool2d,
    grid_symmetries,
    regular_fields,
    resolve_field_groups,
    resolve_restriction,
)

REFERENCE_PARAMS = 255_675  # hlzl/equivariant EquivariantResNet9, paper CIFAR-10 setting
RTOL = 1e-9

ROT90 = lambda x: torch.rot90(x, 1, dims=(-2, -1))  # noqa: E731
ROT180 = lambda x: torch.rot90(x, 2, dims=(-2, -1))  # noqa: E731
FLIP_H = lambda x: torch.flip(x, dims=(-2,))  # noqa: E731
FLIP_W = lambda x: torch.flip(x, dims=(-1,))  # noqa: E731
TRANSPOSE = lambda x: x.transpose(-2, -1)  # noqa: E731


def relative_change(model: torch.nn.Module, x: torch.Tensor, transform) -> float:
    with torch.no_grad():
        y = model(x)
        return float((model(transform(x)) - y).abs().max() / y.abs().max())


@pytest.fixture(scope="module")
def paper_model() -> EquivariantResNet9:
    torch.manual_seed(0)
    return EquivariantResNet9(group="dihedral", order=4, restrict=2, layout=(16, 32, 64), in_channels=3, num_classes=10)


def test_paper_parameter_count(paper_model: EquivariantResNet9) -> None:
    params = paper_model.num_params
    print(
        f"\nequivariant ResNet-9 D4->D2, layout 16/32/64: {params:,} trainable parameters "
        f"(reference {REFERENCE_PARAMS:,}, {100 * (params / REFERENCE_PARAMS - 1):+.2f} %)"
    )
    assert abs(params - REFERENCE_PARAMS) <= 0.05 * REFERENCE_PARAMS
    # The steerable filters themselves match the reference exactly (253,904 coefficients).
    coefficients = sum(m.weight.numel() for m in paper_model.modules() if isinstance(m, layers.SteerableConv2d))
    assert coefficients == 253_904
    assert paper_model.fields == (6, 13, 39)
    assert paper_model.group_description == "D4->D2"


def test_paper_model_is_invariant_to_d2_only(paper_model: EquivariantResNet9) -> None:
    model = paper_model.double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for transform in (ROT180, FLIP_H, FLIP_W):
        assert relative_change(model, x, transform) < RTOL
    # 90-degree rotations are not in D2: the logits must change (the check above is not vacuous).
    assert relative_change(model, x, ROT90) > 1e-4
    assert [t.name for t in model.symmetries()] == ["rot180", "flip_h", "flip_w"]
    paper_model.float()


def test_width_rule_matches_reference() -> None:
    # int(w * sqrt(1.5 |G|) / |G|): D4 (|G| = 8) and, after halving, D2 (|G| = 4).
    assert [regular_fields(w, 8) for w in (16, 32, 64)] == [6, 13, 27]
    assert regular_fields(64, 4) == 39
    assert regular_fields(64, 4, fix_params=False) == 64
    with pytest.warns(UserWarning):
        assert regular_fields(1, 32) == 1


def test_field_groups() -> None:
    assert resolve_field_groups(16, 8) == 8
    assert resolve_field_groups(6, 8) == 1  # a layer norm rather than groups of one field
    assert resolve_field_groups(13, 8) == 1
    assert resolve_field_groups(39, 8) == 3


def test_restriction_ids() -> None:
    assert resolve_restriction("dihedral", 4, "halved") == 2
    assert resolve_restriction("dihedral", 4, 4) is None
    assert resolve_restriction("cyclic", 8, 1) == 1
    for bad in (3, 0, -2, "half", 2.0):
        with pytest.raises(ValueError):
            resolve_restriction("dihedral", 4, bad)
    with pytest.raises(ValueError, match="even"):
        resolve_restriction("cyclic", 5, "halved")


# (group, order, restrict) -> names of the exact grid symmetries of the final group.
CASES = {
    "D4->D2": (("dihedral", 4, 2), {"rot180", "flip_h", "flip_w"}),
    "D4": (("dihedral", 4, None), {"rot90", "rot180", "rot270", "flip_h", "flip_w", "transpose", "antitranspose"}),
    "C8": (("cyclic", 8, None), {"rot90", "rot180", "rot270"}),
    "C4": (("cyclic", 4, None), {"rot90", "rot180", "rot270"}),
    "D1": (("dihedral", 1, None), {"flip_w"}),
    "D3": (("dihedral", 3, None), {"flip_w"}),
    "C8->C2": (("cyclic", 8, 2), {"rot180"}),
}
ALL_TRANSFORMS = {"rot90": ROT90, "rot180": ROT180, "flip_h": FLIP_H, "flip_w": FLIP_W, "transpose": TRANSPOSE}


@functools.cache
def small_model(case: str) -> EquivariantResNet9:
    """One small single-channel float64 model per case, shared by tests (escnn builds are slow).

    Tests that change parameters work on a deep copy.
    """
    (group, order, restrict), _ = CASES[case]
    torch.manual_seed(1)
    model = EquivariantResNet9(group, order, layout=(8, 12, 12), restrict=restrict, in_channels=1, num_classes=5)
    return model.double().eval()


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_invariance(case: str) -> None:
    """Exact invariance on MNIST-like 28x28 (28 -> 14 -> 7 -> 4 via the centred odd pooling),
    digits-like 8x8 (-> 1x1) and CIFAR-sized 32x32 inputs; channels only change the lifting
    layer, and the 3-channel paper model is checked on 32x32x3 above."""
    model = small_model(case)
    expected = CASES[case][1]
    symmetries = model.symmetries()
    assert {t.name for t in symmetries} == expected
    torch.manual_seed(3)
    for size in (28, 8, 32):
        x = torch.randn(2, 1, size, size, dtype=torch.float64)
        for transform in symmetries:
            assert relative_change(model, x, transform) < RTOL, (size, transform.name)
        # Elements outside the final group must change the logits.
        for name, transform in ALL_TRANSFORMS.items():
            if name not in expected:
                assert relative_change(model, x, transform) > 1e-4, (size, name)


def test_paper_model_on_odd_sizes(paper_model: EquivariantResNet9) -> None:
    model = paper_model.double().eval()
    x = torch.randn(1, 3, 28, 28, dtype=torch.float64)
    for transform in model.symmetries():
        assert relative_change(model, x, transform) < RTOL, transform.name
    paper_model.float()


def test_invariance_survives_arbitrary_parameters() -> None:
    """DP-SGD adds Gaussian noise to every parameter; the model must stay invariant."""
    torch.manual_seed(2)
    model = copy.deepcopy(small_model("D4"))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    for transform in model.symmetries():
        assert relative_change(model, x, transform) < RTOL, transform.name


def test_float32_forward_backward() -> None:
    model = copy.deepcopy(small_model("C4")).float().train()
    x = torch.randn(4, 1, 32, 32)
    out = model(x)
    assert out.shape == (4, 5) and out.dtype == torch.float32
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_per_example_gradients_with_torch_func() -> None:
    """vmap(grad) gives each example's gradient (escnn's content hashing would break this)."""
    from torch.func import functional_call, grad, vmap

    model = copy.deepcopy(small_model("D4->D2"))
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (x[None],))
        return torch.nn.functional.cross_entropy(out, y[None])

    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    loss(dict(model.named_parameters()), x[1], y[1]).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(per_example[name][1], p.grad, rtol=1e-10, atol=1e-12)


def test_group_descriptions() -> None:
    assert small_model("C8").group_description == "C8"
    assert small_model("C8->C2").group_description == "C8->C2"
    assert small_model("D1").group_description == "D1"


def test_models_do_not_share_basis_buffers() -> None:
    """escnn caches bases globally; .double() on one model must not alter another."""
    a = EquivariantResNet9("cyclic", 2, layout=(4, 4, 4), restrict=None)
    b = EquivariantResNet9("cyclic", 2, layout=(4, 4, 4), restrict=None)
    a.double()
    assert all(buf.dtype == torch.float32 for buf in b.buffers() if buf.is_floating_point())
    assert b(torch.randn(1, 3, 8, 8)).shape == (1, 10)
    buffers_a = {buf.data_ptr() for buf in a.buffers()}
    assert not buffers_a & {buf.data_ptr() for buf in b.buffers()}


@pytest.mark.parametrize("size,expected", [(32, 16), (28, 14), (7, 4), (1, 1), (8, 4)])
def test_symmetric_pool(size: int, expected: int) -> None:
    pool = SymmetricMaxPool2d()
    x = torch.randn(1, 2, size, size, dtype=torch.float64)
    y = pool(x)
    assert y.shape[-2:] == (expected, expected)
    for transform in (ROT90, FLIP_H, TRANSPOSE):
        assert torch.equal(pool(transform(x)), transform(y))


def test_grid_symmetries_table() -> None:
    assert grid_symmetries("cyclic", 1) == []
    assert [t.name for t in grid_symmetries("cyclic", 6)] == ["rot180"]
    assert [t.name for t in grid_symmetries("dihedral", 6)] == ["rot180", "flip_h", "flip_w"]
    assert len(grid_symmetries("dihedral", 16)) == 7
    assert [t.name for t in grid_symmetries("dihedral", 5)] == ["flip_w"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"group": "octahedral"},
        {"order": 0},
        {"order": 17},
        {"group": "dihedral", "order": 4, "restrict": 3},
        {"layout": (16, 32)},
        {"layout": (16, 0, 64)},
        {"num_groups": (8, 8)},
        {"in_channels": 0},
        {"bandlimit": -1.0},
    ],
)
def test_invalid_options(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        EquivariantResNet9(**kwargs)


def test_no_basis_holds_subnormal_numbers(paper_model: EquivariantResNet9) -> None:
    """Round-off of zeros in the re-sampled basis (~1e-39) would be float32 subnormals, which CPUs that
    handle them in microcode multiply 10x slower (the per-example basis transpose); they are zero."""
    models = {"D4->D2 16/32/64": paper_model, "C8": small_model("C8")}
    tiny = torch.finfo(torch.float32).tiny
    for name, model in models.items():
        bases = [b for n, b in model.named_buffers() if n.endswith("sampled_basis")]
        assert bases, name
        for basis in bases:
            assert not ((basis != 0) & (basis.abs() < tiny)).any(), name


def test_flushing_subnormals_zeroes_only_them() -> None:
    tiny = torch.finfo(torch.float32).tiny
    basis = torch.tensor([0.25, -tiny / 4, tiny / 4, tiny, -0.5, 1e-30, 0.0], dtype=torch.float64)
    flushed = layers.flush_subnormal(basis, torch.float32)
    assert flushed.tolist() == [0.25, 0.0, 0.0, tiny, -0.5, 1e-30, 0.0]
    assert flushed.dtype == torch.float64
