"""Search-space schema: every malformed space fails when it is read, naming the line or key."""

import pytest

from eqdp_ray.config import ConfigError, SpaceError
from eqdp_ray.config.space import load_space
from eqdp_ray.tune.feasibility import check_space
from tests.config.space_examples import TRAIN_SIZE, VALID_YAML, base, write


def test_valid_yaml_parses_with_defaults(tmp_path):
    space = load_space(write(tmp_path, VALID_YAML))
    assert space.study == "unit" and space.privacy["accountant"] == "rdp"
    assert space.sampler.type == "tpe" and space.scheduler.type == "asha"
    assert list(space.search) == ["training.lr", "training.batch_size"]
    check = check_space(space, TRAIN_SIZE)
    assert check.points_checked >= 3 and check.hardest_feasible


def test_unknown_config_key_names_line_and_suggests(tmp_path):
    text = VALID_YAML.replace("training.lr: {type", "trainng.lr: {type")
    with pytest.raises(
        SpaceError,
        match=r"space\.yaml:7: 'search\.trainng\.lr': unknown config key 'trainng\.lr'; "
        r"did you mean 'training\.lr'",
    ):
        load_space(write(tmp_path, text))


def test_unknown_top_level_and_nested_keys_name_their_line(tmp_path):
    with pytest.raises(SpaceError, match=r"space\.yaml:9: 'num_sample'.*did you mean 'num_samples'"):
        load_space(write(tmp_path, VALID_YAML.replace("num_samples: 2", "num_sample: 2")))
    text = VALID_YAML.replace("{type: loguniform, low: 0.5, high: 4.0}", "{type: loguniform, low: 0.5, hgh: 4.0}")
    with pytest.raises(SpaceError, match=r"space\.yaml:7: 'search\.training\.lr\.hgh': unknown key"):
        load_space(write(tmp_path, text))


def test_duplicate_yaml_key_is_an_error(tmp_path):
    text = VALID_YAML + "    num_samples: 5\n"
    with pytest.raises(SpaceError, match=r"space\.yaml:10: duplicate key 'num_samples' \(first at line 9\)"):
        load_space(write(tmp_path, text))


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"type": "float", "low": 2.0, "high": 2.0}, "empty range: low=2.0 must be below high=2.0"),
        ({"type": "int", "low": 5, "high": 3}, "empty range"),
        ({"type": "loguniform", "low": 0.0, "high": 1.0}, "log scale needs low > 0"),
        ({"type": "categorical", "choices": []}, "non-empty list of choices"),
        ({"type": "categorical", "choices": [1, 1]}, "repeated choice"),
        ({"type": "gaussian", "low": 0, "high": 1}, "type must be one of"),
        (0.5, "needs a distribution"),
    ],
)
def test_bad_distributions(spec, match):
    space = base()
    space["search"]["training.momentum"] = spec
    with pytest.raises(SpaceError, match=match):
        load_space(space)


def test_fixed_and_searched_is_an_error(tmp_path):
    text = VALID_YAML.replace("training.steps: 20", "training.steps: 20\n      training.lr: 1.0")
    with pytest.raises(
        SpaceError, match=r"space\.yaml:8: 'search\.training\.lr': is both fixed \(line 6\) and searched"
    ):
        load_space(write(tmp_path, text))


@pytest.mark.parametrize(
    "block,key",
    [
        ("search", "privacy.noise_multiplier"),
        ("search", "sigma"),
        ("fixed", "privacy.sigma"),
        ("fixed", "noise_multiplier"),
    ],
)
def test_sigma_is_never_set(block, key):
    space = base()
    value = {"type": "float", "low": 0.5, "high": 2.0} if block == "search" else 1.0
    space[block][key] = value
    with pytest.raises(SpaceError, match="sigma .* is never set or searched"):
        load_space(space)
    with pytest.raises(SpaceError, match="sigma"):
        load_space(base(privacy={"target_epsilon": 8.0, "delta": 1e-5, "noise_multiplier": 1.0}))


@pytest.mark.parametrize("block", ["search", "fixed"])
def test_the_budget_cannot_move(block):
    space = base()
    space[block]["privacy.target_epsilon"] = {"type": "float", "low": 1, "high": 8} if block == "search" else 4.0
    with pytest.raises(SpaceError, match="belongs to the privacy block"):
        load_space(space)
    space = base()
    space[block]["data.val_size"] = {"type": "float", "low": 0.1, "high": 0.2} if block == "search" else 0.2
    with pytest.raises(SpaceError, match="belongs to the data block"):
        load_space(space)


def test_clip_norm_is_a_training_choice_not_part_of_the_budget():
    with pytest.raises(SpaceError, match="clip norm is a training choice"):
        load_space(base(privacy={"target_epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0}))
    space = base()
    space["search"]["privacy.max_grad_norm"] = {"type": "float", "low": 0.5, "high": 4.0, "log": True}
    assert "privacy.max_grad_norm" in load_space(space).search


def test_multi_objective_with_asha_is_refused():
    objectives = [{"metric": "val_accuracy", "mode": "max"}, {"metric": "num_params", "mode": "min"}]
    with pytest.raises(SpaceError, match="ASHA stops trials on a single metric"):
        load_space(base(objectives=objectives, scheduler={"type": "asha"}))
    space = load_space(base(objectives=objectives))  # without an explicit scheduler: none
    assert space.scheduler.type == "none" and space.multi_objective and space.modes == ["max", "min"]


def test_test_accuracy_never_drives_the_search():
    with pytest.raises(SpaceError, match="test_accuracy never drives the search"):
        load_space(base(objectives=[{"metric": "test_accuracy"}]))


def test_random_count_needs_random_search_without_early_stopping():
    count = {"distribution": "truncated_negative_binomial", "mean": 4, "eta": 1}
    space = load_space(base(num_samples=count))
    assert space.private_selection and space.sampler.type == "random" and space.scheduler.type == "none"
    with pytest.raises(SpaceError, match="needs sampler type random"):
        load_space(base(num_samples=count, sampler={"type": "tpe"}))
    with pytest.raises(SpaceError, match="needs scheduler type none"):
        load_space(base(num_samples=count, scheduler={"type": "asha"}))
    with pytest.raises(SpaceError, match="mean must be > 1"):
        load_space(base(num_samples={"distribution": "truncated_negative_binomial", "mean": 1}))


def test_range_ends_have_the_type_of_their_key():
    space = base()
    space["search"]["training.momentum"] = {"type": "float", "low": 0.5, "high": 1.0}  # momentum 1.0 is invalid
    with pytest.raises(SpaceError, match=r"'search\.training\.momentum\.high': 1\.0 is not a valid value: must be < 1"):
        load_space(space)


def test_condition_on_unknown_key_and_cycles():
    space = base()
    space["search"]["model.options.group"] = {
        "type": "categorical",
        "choices": ["cyclic"],
        "when": {"model.options.bogus": 1},
    }
    with pytest.raises(SpaceError, match="neither searched nor fixed"):
        load_space(space)
    space = base()
    space["search"]["training.momentum"] = {"type": "float", "low": 0, "high": 0.9, "when": {"training.nesterov": True}}
    space["search"]["training.nesterov"] = {
        "type": "categorical",
        "choices": [True, False],
        "when": {"training.momentum": 0.5},
    }
    with pytest.raises(SpaceError, match="cycle"):
        load_space(space)


def test_overrides_apply_to_dotted_keys(tmp_path):
    path = write(tmp_path, VALID_YAML)
    space = load_space(path, ["num_samples=7", "fixed.training.steps=9", "search.training.lr.high=3", "sampler.seed=5"])
    assert space.num_samples == 7 and space.fixed["training.steps"] == 9 and space.sampler.seed == 5
    assert space.search["training.lr"].high == 3
    with pytest.raises(SpaceError, match=r"--set search\.training\.lr\.high: 'search\.training\.lr': empty range"):
        load_space(path, ["search.training.lr.high=0.1"])
    with pytest.raises(SpaceError, match="no key of 'search' matches 'training.nope.high'"):
        load_space(path, ["search.training.nope.high=3"])
    space = load_space(path, ["search.training.momentum={type: float, low: 0.0, high: 0.9}"])
    assert space.search["training.momentum"].high == 0.9


def test_space_error_is_a_config_error():
    assert issubclass(SpaceError, ConfigError)
    with pytest.raises(ConfigError, match="study name"):
        load_space(base(study="has space"))


def test_space_file_errors_name_the_file(tmp_path):
    with pytest.raises(SpaceError, match="is a directory; pass a search space file"):
        load_space(tmp_path)
    path = tmp_path / "space.yaml"
    path.write_bytes(VALID_YAML.encode() + b"# \xff\n")
    with pytest.raises(SpaceError, match=r"space\.yaml:\d+: not a UTF-8 text file"):
        load_space(path)


def test_data_block_has_the_run_config_types(tmp_path):
    """The cifar10 spaces' `val_size: 5000` is a count, as in a run config; `5000.0` is refused at its line."""
    text = VALID_YAML.replace("data: {name: digits}", "data:\n      name: digits\n      val_size: 500")
    assert load_space(write(tmp_path, text)).data["val_size"] == 500
    with pytest.raises(SpaceError, match=r"space\.yaml:5: 'data\.val_size': 500\.0 is a fraction"):
        load_space(write(tmp_path, text.replace("500", "500.0")))
    with pytest.raises(SpaceError, match=r"space\.yaml:3: 'data\.vall_size': unknown key; did you mean 'val_size'"):
        load_space(write(tmp_path, VALID_YAML.replace("data: {name: digits}", "data: {name: digits, vall_size: 5}")))


def test_fixed_values_have_the_type_of_their_key(tmp_path):
    text = VALID_YAML.replace("training.steps: 20", "training.steps: 20.5")
    with pytest.raises(SpaceError, match=r"space\.yaml:5: 'fixed\.training\.steps': expected an integer, got 20\.5"):
        load_space(write(tmp_path, text))
    with pytest.raises(SpaceError, match=r"--set fixed\.training\.steps: expected an integer"):
        load_space(write(tmp_path, VALID_YAML), ["fixed.training.steps=abc"])


def test_a_set_that_fixes_a_searched_key_names_the_set(tmp_path):
    """It used to blame the file's search line and say 'fixed (line ?)'."""
    with pytest.raises(
        SpaceError,
        match=r"^--set fixed\.training\.lr: 'training\.lr' is both fixed and searched \(\S*space\.yaml:7\); keep one",
    ):
        load_space(write(tmp_path, VALID_YAML), ["fixed.training.lr=1.0"])


def test_a_set_length_of_training_against_the_files_names_the_set_and_the_other_key(tmp_path):
    with pytest.raises(
        SpaceError,
        match=r"^--set fixed\.training\.epochs: set only one of 'training\.steps' and 'training\.epochs'.*"
        r"'training\.steps' is also set \(\S*space\.yaml:5 under 'fixed'\): remove one",
    ):
        load_space(write(tmp_path, VALID_YAML), ["fixed.training.epochs=3"])
    with pytest.raises(SpaceError, match=r"^--set fixed\.sample_rate: set only one of 'training\.batch_size'"):
        load_space(write(tmp_path, VALID_YAML), ["fixed.sample_rate=0.1"])


def test_a_space_key_set_twice_is_refused(tmp_path):
    with pytest.raises(SpaceError, match=r"--set fixed\.training\.steps is given twice"):
        load_space(write(tmp_path, VALID_YAML), ["fixed.training.steps=5", "fixed.training.steps=6"])
