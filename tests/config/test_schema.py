import pytest

from eqdp_ray.config import ConfigError, apply_overrides, load_config, parse_config


def test_defaults_need_steps_or_epochs():
    with pytest.raises(ConfigError, match="exactly one of 'steps' and 'epochs'"):
        parse_config({})
    config = parse_config({"training": {"steps": 10}})
    assert config.training.steps == 10 and config.privacy.delta == 1e-5


def test_unknown_key_names_its_path():
    with pytest.raises(ConfigError, match="'training.learning_rate': unknown key; valid keys here: batch_size"):
        parse_config({"training": {"steps": 1, "learning_rate": 0.1}})
    with pytest.raises(ConfigError, match="'bogus': unknown key"):
        parse_config({"bogus": 1, "training": {"steps": 1}})


@pytest.mark.parametrize(
    "override,match",
    [
        ("privacy.target_epsilon=0", "'privacy.target_epsilon': must be > 0, got 0"),
        ("privacy.target_epsilon=-3", "'privacy.target_epsilon': must be > 0, got -3"),
        ("privacy.delta=1", "'privacy.delta': must be < 1, got 1"),
        ("privacy.accountant=gdp", "'privacy.accountant': must be 'rdp' or 'prv', got 'gdp'"),
        ("training.steps=abc", "'training.steps': expected an integer, got 'abc'"),
        ("training.batch_size=256.0", "'training.batch_size': expected an integer, got 256.0"),
        ("training.augmult=0", "'training.augmult': must be >= 1, got 0"),
        ("data.download=maybe", "'data.download': expected true or false, got 'maybe'"),
        ("data.val_size=0", "'data.val_size': a count must be >= 1, got 0"),
        (
            "data.val_size=1.5",
            r"'data.val_size': 1.5 is a fraction \(it has a decimal point\) and must lie in \(0, 1\)",
        ),
        ("data.val_size=abc", r"'data.val_size': expected a count \(an integer, e.g. 5000\) or a fraction"),
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
    with pytest.raises(ConfigError, match=r"bad\.yaml:4: malformed YAML"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_a_directory_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path}: is a directory; pass a config file"):
        load_config(tmp_path)


def test_a_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: x\ntraining:\n  steps: 1\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml:4: not a UTF-8 text file"):
        load_config(path)


def test_a_duplicated_key_names_both_lines(tmp_path):
    """Failure 6 of issue 11: `lr:` twice silently used the last one."""
    path = tmp_path / "twice.yaml"
    path.write_text("training:\n  steps: 1\n  lr: 0.5\n  lr: 4.0\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml:4: duplicate key 'training\.lr' \(first at line 3\)"):
        load_config(path)


def test_errors_name_the_line_and_suggest_the_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("training:\n  steps: 1\n  augmul: 2\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml:3: 'training\.augmul': unknown key; did you mean 'augmult'\?"):
        load_config(path)
    path.write_text("training:\n  steps: 1\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml:3: 'training\.lr': must be > 0, got -1"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"--set training\.lr: must be > 0, got 0"):
        load_config(path, ["training.lr=0"])


def test_val_size_is_a_count_when_written_as_an_integer(tmp_path):
    """`val_size: 5000` holds out 5,000 examples; it was read as the impossible fraction 5000.0."""
    path = tmp_path / "count.yaml"
    path.write_text("data: {val_size: 5000}\ntraining: {steps: 1}\n")
    config = load_config(path)
    assert config.data.val_size == 5000 and isinstance(config.data.val_size, int)
    assert isinstance(load_config(path, ["data.val_size=0.1"]).data.val_size, float)
    with pytest.raises(ConfigError, match="to mean a count write it as an integer: 5000"):
        load_config(path, ["data.val_size=5000.0"])


def test_val_size_count_reaches_the_split():
    from eqdp_ray.data import load_dataset

    config = parse_config({"data": {"name": "digits", "val_size": 100}, "training": {"steps": 1}})
    d = config.data
    data = load_dataset(d.name, d.root, download=d.download, val_size=d.val_size, seed=config.seed)
    assert 70 <= len(data.val_y) <= 130  # a count of about 100: the split is by each example's hash


def test_config_round_trips_through_its_dict():
    from eqdp_ray.config import config_to_dict

    config = parse_config({"data": {"val_size": 50}, "training": {"epochs": 2}})
    assert parse_config(config_to_dict(config)) == config


def test_steps_set_over_a_config_with_epochs_says_which_to_unset(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  batch_size: 64\n  epochs: 3\n")
    with pytest.raises(
        ConfigError,
        match=r"^--set training\.steps: set exactly one of 'steps' and 'epochs': the config also sets "
        r"'training\.epochs' \(\S*run\.yaml:3\); unset it with --set training\.epochs=null$",
    ):
        load_config(path, ["training.steps=5"])
    assert load_config(path, ["training.steps=5", "training.epochs=null"]).training.steps == 5
    with pytest.raises(ConfigError, match=r"^--set training\.epochs: .*neither is set"):
        load_config(path, ["training.epochs=null"])


def test_a_config_key_set_twice_is_refused():
    with pytest.raises(ConfigError, match=r"^--set training\.lr is given twice"):
        load_config(None, ["training.steps=5", "training.lr=1", "training.lr=2"])
