import pytest

from eqdp_ray.config import ConfigError, apply_overrides, load_config, parse_config


def test_defaults_need_steps_or_epochs():
    with pytest.raises(ConfigError, match="exactly one of 'steps' and 'epochs'"):
        parse_config({})
    config = parse_config({"training": {"steps": 10}})
    assert config.training.steps == 10 and config.privacy.delta == 1e-5


def test_unknown_key_names_its_path():
    with pytest.raises(ConfigError, match="unknown key 'training.learning_rate'"):
        parse_config({"training": {"steps": 1, "learning_rate": 0.1}})
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        parse_config({"bogus": 1, "training": {"steps": 1}})


@pytest.mark.parametrize(
    "override,match",
    [
        ("privacy.target_epsilon=0", "target_epsilon must be > 0"),
        ("privacy.target_epsilon=-3", "target_epsilon must be > 0"),
        ("privacy.delta=1", "delta must lie strictly between 0 and 1"),
        ("privacy.accountant=gdp", "accountant"),
        ("training.steps=abc", "expected an integer"),
        ("training.augmult=0", "augmult"),
        ("data.download=maybe", "expected true or false"),
    ],
)
def test_bad_values_are_clear(override, match):
    data = apply_overrides({"training": {"steps": 5}}, [override])
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


def test_overrides_parse_yaml_scalars_and_nest():
    data = apply_overrides({}, ["training.steps=7", "model.options.layout=[4, 8, 8]", "privacy.delta=1e-6", "name=x"])
    config = parse_config(data)
    assert config.training.steps == 7 and config.model.options["layout"] == [4, 8, 8]
    assert config.privacy.delta == 1e-6 and config.name == "x"


def test_malformed_yaml_reports_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntraining:\n  steps: [1, 2\n  lr: 3\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_configs_parse():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert len(configs) >= 2
    for path in configs:
        load_config(path)
