"""The top-level `eqdp-ray` command: only user errors become one line and exit 2."""

import pytest

from eqdp_ray import cli
from eqdp_ray.config import ConfigError, SpaceError
from eqdp_ray.config.errors import UserError
from eqdp_ray.data import DatasetError
from eqdp_ray.models import MODELS, ModelOptionError, build_model
from eqdp_ray.privacy import PrivacyBudgetError, PrivacyError
from eqdp_ray.results import ResultsStoreError
from eqdp_ray.train.cluster import ClusterError


def test_every_layers_user_errors_share_one_base():
    for error in (ConfigError, SpaceError, DatasetError, ModelOptionError, PrivacyError, PrivacyBudgetError):
        assert issubclass(error, UserError), error
    assert issubclass(ResultsStoreError, UserError) and issubclass(ClusterError, UserError)


def test_a_bad_model_option_is_a_user_error():
    with pytest.raises(ModelOptionError, match="unknown group"):
        build_model("eq_resnet9", group="icosahedral")


def test_a_bug_is_not_hidden_behind_a_one_line_error(monkeypatch, capsys):
    """A ValueError that is not a user error (here: from a broken summary) used to print as
    'eqdp-ray: error: ...' with exit 2; it must surface with its traceback."""

    def broken(name, **options):
        raise ValueError("internal bug: shapes do not match")

    monkeypatch.setattr("eqdp_ray.models.model_summary", broken)
    with pytest.raises(ValueError, match="internal bug"):
        cli.main(["models"])
    assert "eqdp-ray: error" not in capsys.readouterr().err


def test_models_table_describes_every_model(capsys):
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, spec in MODELS.items():
        row = next(line for line in lines if line.startswith(name + " "))
        assert spec.description in row  # the column used to be empty


def test_top_level_help_says_what_the_tool_does_and_lists_every_command_on_one_line(monkeypatch, capsys):
    """The help used to open with 'a thin command-line face over the Python API'."""
    import re

    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert (
        exited.value.code == 0
        and "differentially private training (DP-SGD)" in out
        and "a thin command-line face" not in out
    )
    assert "eqdp-ray train configs/quickstart.yaml" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    commands = cli.build_parser()._subparsers._group_actions[0].choices  # every registered command
    assert set(commands) >= {"train", "models", "audit", "tune", "best", "results", "report"}
    for name in commands:
        assert re.search(rf"^    {name} +\S.*\w$", out, re.M), f"{name} has no one-line help:\n{out}"


def test_the_cli_starts_without_torch_or_ray():
    """Every command imports the audit, tune and results CLIs to register them; `best` or `--help`
    took ~7 s because the audit and tune packages imported torch on the way."""
    import subprocess
    import sys

    probe = (
        "import sys; from eqdp_ray import cli; cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'ray', 'escnn', 'opacus') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.parametrize("package", ["eqdp_ray.audit", "eqdp_ray.tune"])
def test_every_name_a_lazy_package_exports_loads(package):
    import importlib

    module = importlib.import_module(package)
    for name in module.__all__:
        getattr(module, name)  # a wrong home raises AttributeError or ModuleNotFoundError
    with pytest.raises(AttributeError, match="no_such_name"):
        module.no_such_name  # noqa: B018
