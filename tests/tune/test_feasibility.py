"""Feasibility of a space: sampled configs parse, batches fit the data, the budget is reachable."""

import pytest

from eqdp_ray.config import SpaceError
from eqdp_ray.config.space import load_space, trial_config
from eqdp_ray.tune.feasibility import check_space, corner_points, privacy_candidates
from tests.config.space_examples import TRAIN_SIZE, base


def test_impossible_budget_fails_before_any_trial():
    space = load_space(
        base(
            privacy={"target_epsilon": 1e-4, "delta": 1e-5},
            fixed={"training.steps": 20000, "training.batch_size": TRAIN_SIZE},
            search={"training.lr": {"type": "float", "low": 0.5, "high": 2.0}},
        )
    )
    with pytest.raises(SpaceError, match="no trial of this space can meet the privacy budget epsilon=0.0001"):
        check_space(space, TRAIN_SIZE)


def test_sampled_configs_must_parse():
    space = base()  # each value is valid on its own, not together
    space["search"]["training.nesterov"] = {"type": "categorical", "choices": [True, False]}
    space["fixed"]["training.momentum"] = 0.0
    with pytest.raises(SpaceError, match=r"training\.nesterov=True.*'training\.nesterov': Nesterov momentum needs"):
        check_space(load_space(space), TRAIN_SIZE)


def test_batch_larger_than_the_training_set_is_caught():
    space = base()
    space["search"]["training.batch_size"] = {"type": "categorical", "choices": [128, 4096]}
    with pytest.raises(SpaceError, match="expected batch of 4096, but the training set is only 1294 examples"):
        check_space(load_space(space), TRAIN_SIZE)


def test_a_batch_over_a_tiny_train_subset_blames_the_subset():
    """It used to say only 'lower the batch', when the subset the user set was what made the data small."""
    space = base(data={"name": "digits", "train_subset": 50})
    with pytest.raises(
        SpaceError,
        match=r"only 41 examples because data\.train_subset=50 keeps about that many.*raise data\.train_subset",
    ):
        check_space(load_space(space), 41)


def test_a_fixed_key_set_by_set_is_named_when_a_trial_config_fails():
    """A --set that makes every trial config invalid used to be reported without the --set that caused it."""
    with pytest.raises(
        SpaceError, match=r"is invalid: --set fixed\.training\.nesterov: 'training\.nesterov': Nesterov"
    ):
        check_space(load_space(base(), ["fixed.training.nesterov=true"]), TRAIN_SIZE)
    with pytest.raises(SpaceError, match=r"is invalid: --set fixed\.model\.options\.bogus: .*unknown option"):
        check_space(load_space(base(), ["fixed.model.options.bogus=1"]), TRAIN_SIZE)


def test_corner_points_activate_conditional_keys():
    space = load_space(base())
    points = corner_points(space)
    assert any(p.get("model.options.width") == 0.25 and p["model.name"] == "resnet9" for p in points)
    assert any(p.get("model.options.layout") == (8, 8, 16) for p in points)
    assert {p["training.batch_size"] for p in points} == {64, 256}


def test_sample_rate_pseudo_key_and_privacy_candidates():
    space = base(fixed={"training.epochs": 2})
    del space["search"]["training.batch_size"]
    space["search"]["sample_rate"] = {"type": "categorical", "choices": [0.05, 0.1]}
    space = load_space(space)
    config = trial_config(space, {"sample_rate": 0.1, "training.lr": 1.0, "model.name": "resnet9"}, TRAIN_SIZE)
    assert config.training.batch_size == round(0.1 * TRAIN_SIZE)
    candidates = privacy_candidates(space, TRAIN_SIZE)
    assert candidates == sorted({(65 / TRAIN_SIZE, 40), (129 / TRAIN_SIZE, 21)})
    with pytest.raises(SpaceError, match="set only one of 'training.batch_size' and 'sample_rate'"):
        load_space(base(fixed={"training.steps": 5, "sample_rate": 0.1}))


def test_model_options_are_checked_against_the_model_registry():
    space = base()
    space["search"]["model.options.width"]["when"] = {"model.name": "eq_resnet9"}  # resnet9-only option
    with pytest.raises(SpaceError, match=r"unknown option\(s\) \['width'\] for model 'eq_resnet9'"):
        check_space(load_space(space), TRAIN_SIZE)
