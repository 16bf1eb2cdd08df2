"""Registry: names, defaults, errors that list the valid choices, summaries and symmetries."""

from __future__ import annotations

import pytest
import torch

from eqdp_ray.models import (
    MODELS,
    EquivariantResNet9,
    ResNet9,
    WideResNet,
    build_model,
    count_parameters,
    is_equivariant,
    max_invariance_error,
    model_summary,
    symmetry_transforms,
)


def test_registered_names() -> None:
    assert {"eq_resnet9", "resnet9", "wrn16_4", "wrn"} <= set(MODELS)
    for spec in MODELS.values():
        assert spec.description and isinstance(spec.defaults, dict)
    assert is_equivariant("eq_resnet9")
    assert not is_equivariant("resnet9") and not is_equivariant("wrn16_4")


def test_build_types() -> None:
    eq = build_model("eq_resnet9", group="cyclic", order=2, layout=(4, 4, 4))
    assert isinstance(eq, EquivariantResNet9) and eq.group_description == "C2->C1"
    assert isinstance(build_model("resnet9", width=0.125), ResNet9)
    wrn = build_model("wrn", depth=10, width=2)
    assert isinstance(wrn, WideResNet)
    assert count_parameters(wrn) < count_parameters(build_model("wrn16_4"))


def test_unknown_name_lists_models() -> None:
    with pytest.raises(ValueError, match="eq_resnet9") as info:
        build_model("resnet18")
    assert "wrn16_4" in str(info.value)
    with pytest.raises(ValueError):
        is_equivariant("vgg")


def test_unknown_option_lists_options() -> None:
    with pytest.raises(ValueError, match="rotation") as info:
        build_model("eq_resnet9", rotation=4)
    assert "order" in str(info.value) and "restrict" in str(info.value)
    with pytest.raises(ValueError, match="depth"):
        build_model("resnet9", depth=16)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"group": "so2"}, "cyclic"),
        ({"order": 17}, "1..16"),
        ({"order": 0}, "1..16"),
        ({"order": 4, "restrict": 3}, "divide"),
        ({"order": 6, "restrict": 4}, "subgroup"),
        ({"order": 3}, "even"),  # the default restrict='halved' needs an even order
        ({"layout": (16, 32)}, "layout"),
        ({"layout": "abc"}, "layout"),
        ({"layout": 16.5}, "layout"),
    ],
)
def test_invalid_values(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model("eq_resnet9", **options)


def test_summary() -> None:
    summary = model_summary("eq_resnet9", layout=(8, 8, 8))
    assert summary["name"] == "eq_resnet9" and summary["group"] == "D4->D2" and summary["equivariant"]
    assert summary["options"]["restrict"] == "halved" and summary["options"]["order"] == 4
    assert 0 < summary["params"] < 255_675
    assert model_summary("eq_resnet9", group="cyclic", order=2, restrict=None, layout=(4, 4, 4))["group"] == "C2"
    baseline = model_summary("wrn", depth=10, width=1)
    assert baseline["group"] is None and not baseline["equivariant"] and baseline["params"] > 0


def test_symmetry_transforms_from_options_and_models() -> None:
    names = lambda ts: [t.name for t in ts]  # noqa: E731
    assert names(symmetry_transforms({})) == ["rot180", "flip_h", "flip_w"]  # paper default D4->D2
    assert names(symmetry_transforms({"name": "eq_resnet9", "group": "cyclic", "order": 8, "restrict": None})) == [
        "rot90",
        "rot180",
        "rot270",
    ]
    assert symmetry_transforms({"name": "resnet9"}) == []
    model = build_model("eq_resnet9", order=1, restrict=None, layout=(8, 8, 8))
    assert names(symmetry_transforms(model)) == ["flip_w"]
    assert symmetry_transforms(build_model("wrn", depth=10, width=1)) == []

    class Wrapper(torch.nn.Module):  # stands in for Opacus' GradSampleModule(_module=...)
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self._module = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._module(x)

    wrapped = Wrapper(model).double()
    assert names(symmetry_transforms(wrapped)) == ["flip_w"]
    assert max_invariance_error(wrapped, torch.randn(2, 3, 16, 16, dtype=torch.float64)) < 1e-9
