"""`--set` overrides: one parser for run configs and search spaces, each override remembered for errors."""

import pytest

from eqdp_ray.config import ConfigError, apply_overrides
from eqdp_ray.config.source import Source


@pytest.mark.parametrize("item", ["training.lr", "=3", "training..lr=3", ".lr=3"])
def test_malformed_assignments_are_refused(item):
    with pytest.raises(ConfigError, match="--set"):
        apply_overrides({}, [item])


def test_values_are_yaml_and_keys_nest():
    data = apply_overrides({"training": {"lr": 1.0}}, ["training.lr=0.5", "model.options.layout=[4, 8]", "name=a b"])
    assert data == {"training": {"lr": 0.5}, "model": {"options": {"layout": [4, 8]}}, "name": "a b"}


def test_a_scalar_is_not_a_mapping():
    with pytest.raises(ConfigError, match="--set training.lr.high: 'training.lr' is not a mapping"):
        apply_overrides({"training": {"lr": 1.0}}, ["training.lr.high=3"])


def test_dotted_blocks_take_the_longest_existing_key_and_record_the_override():
    source = Source()
    data = {"search": {"training.lr": {"type": "float", "low": 0.1, "high": 1.0}}, "fixed": {}}
    apply_overrides(
        data,
        ["search.training.lr.high=3", "fixed.training.steps=9"],
        source,
        dotted_blocks=("fixed", "search"),
        whole_blocks=("search",),
    )
    assert data["search"]["training.lr"]["high"] == 3 and data["fixed"] == {"training.steps": 9}
    assert source.overridden == {
        ("search", "training.lr", "high"): "search.training.lr.high",
        ("fixed", "training.steps"): "fixed.training.steps",
    }
    assert source.where(("search", "training.lr")) == "--set search.training.lr.high: 'search.training.lr': "
    with pytest.raises(ConfigError, match="no key of 'search' matches 'training.momentum'"):
        apply_overrides(data, ["search.training.momentum=0.5"], dotted_blocks=("search",), whole_blocks=("search",))


@pytest.mark.parametrize(
    "items, match",
    [
        (
            ["training.lr=1", "training.lr=2"],
            r"--set training.lr is given twice \('training.lr=1', then 'training.lr=2'\)",
        ),
        (["training={lr: 3}", "training.lr=2"], r"--set training.lr: overlaps the earlier --set 'training=\{lr: 3\}'"),
        (["training.lr=2", "training={lr: 3}"], r"--set training: overlaps the earlier --set 'training.lr=2'"),
    ],
)
def test_a_key_given_twice_is_refused_not_last_wins(items, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides({"training": {"lr": 1.0}}, items)


def test_a_key_given_twice_in_a_space_block_is_refused():
    data = {"search": {"training.lr": {"type": "float", "low": 0.1, "high": 1.0}}, "fixed": {}}
    with pytest.raises(ConfigError, match=r"--set search.training.lr.high is given twice"):
        apply_overrides(
            data,
            ["search.training.lr.high=3", "search.training.lr.high=4"],
            dotted_blocks=("fixed", "search"),
            whole_blocks=("search",),
        )
