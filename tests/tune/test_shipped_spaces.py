"""Every search space we ship validates, at the scale it is meant for, before anyone runs it."""

from pathlib import Path

import pytest

from eqdp_ray.tune import check_space, load_space
from eqdp_ray.tune.feasibility import train_size_of
from eqdp_ray.tune.runner import plan_search_privacy

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
# Training-set sizes the spaces are written for: official training sets minus their val_size.
INTENDED_TRAIN_SIZE = {"cifar10": 45000, "rotated_mnist": 54000}


def test_the_four_spaces_are_shipped():
    names = {p.stem for p in SPACES.glob("*.yaml")}
    assert {"quickstart", "cifar10_eps8", "cifar10_eps1", "rotated_mnist"} <= names


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_space_validates(path):
    space = load_space(path)
    assert space.study == path.stem
    name = space.data["name"]
    size = INTENDED_TRAIN_SIZE[name] if name in INTENDED_TRAIN_SIZE else train_size_of(space)
    check = check_space(space, size)
    assert check.hardest_feasible, check.warnings
    if space.private_selection:
        privacy = plan_search_privacy(space, size)
        assert space.privacy["target_epsilon"] < privacy.epsilon < 3 * space.privacy["target_epsilon"]


def test_quickstart_is_offline_cpu_and_compares_both_models():
    space = load_space(SPACES / "quickstart.yaml")
    assert space.data["name"] == "digits" and space.resources.gpus_per_worker == 0
    assert set(space.search["model.name"].choices) == {"eq_resnet9", "resnet9"}
    assert train_size_of(space) == 1303  # 1438 training digits minus a 10% validation split by hash
