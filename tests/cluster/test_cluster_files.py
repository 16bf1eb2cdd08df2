"""The shipped Ray cluster-launcher configs (``cluster*.yaml`` at the repo root) are valid.

"Valid" means what ``ray up`` itself checks before it touches a cloud. In Ray 2.60,
``ray up`` -> ``commands.create_or_update_cluster`` loads the YAML with ``yaml.safe_load``,
looks the provider type up in ``_NODE_PROVIDERS``, and ``commands._bootstrap_config`` then
calls

* ``ray.autoscaler._private.util.prepare_config``: merges the provider's defaults.yaml
  (``fillout_defaults``), merges setup commands, checks the docker block, fills per-node-type
  min/max workers; for the ``local`` provider it first synthesises the node type
  (``prepare_local``);
* ``ray.autoscaler._private.util.validate_config``: validates against
  ``ray/autoscaler/ray-schema.json`` (jsonschema; unknown keys are errors) and checks
  ``head_node_type`` and the min-worker sum.

``ray_up_validate`` below makes exactly those calls. What ``_bootstrap_config`` does next
(``fillout_available_node_types_resources`` and ``bootstrap_config``: IAM, VPC, key pairs)
needs cloud SDKs and credentials and is deliberately not run, so these tests are offline.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_FILES = sorted(REPO_ROOT.glob("cluster*.yaml"))
EXPECTED_PROVIDERS = {"cluster.yaml": "aws", "cluster-gcp.yaml": "gcp", "cluster-local.yaml": "local"}
CLOUD_FILES = [p for p in CLUSTER_FILES if p.name in ("cluster.yaml", "cluster-gcp.yaml")]
PYPROJECT = REPO_ROOT / "pyproject.toml"
DOCS = REPO_ROOT / "docs" / "CLUSTER.md"

# rayproject/ray:<ray version>-py<3NN>[-<platform>], e.g. rayproject/ray:2.60.0-py311-gpu
IMAGE_TAG = re.compile(r"^rayproject/ray(?:-ml)?:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)(?:-(?P<platform>[a-z0-9.]+))?$")
PIP_INSTALL = re.compile(r"\bpip3?\s+install\b")


def ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def ray_up_validate(config: dict) -> dict:
    """Run the checks `ray up` runs before contacting a provider; return the prepared config."""
    from ray.autoscaler._private.providers import _NODE_PROVIDERS
    from ray.autoscaler._private.util import prepare_config, validate_config

    if config.get("provider", {}).get("type") not in _NODE_PROVIDERS:
        raise ValueError(f"unknown provider type {config.get('provider', {}).get('type')!r}")
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def ray_range():
    """The Ray releases pyproject.toml admits (``ray[...]>=X,<Y``): a bounded range."""
    from packaging.requirements import Requirement

    project = tomllib.loads(PYPROJECT.read_text())["project"]
    for dep in project["dependencies"]:
        req = Requirement(dep)
        if req.name == "ray":
            operators = {spec.operator for spec in req.specifier}
            assert operators & {"<", "<=", "=="}, f"ray needs an upper bound in pyproject.toml, got {dep!r}"
            return req.specifier
    raise AssertionError("pyproject.toml does not depend on ray")


def image_tags(config: dict) -> list[str]:
    docker = config.get("docker") or {}
    tags = [docker[k] for k in ("image", "head_image", "worker_image") if docker.get(k)]
    for node_type in (config.get("available_node_types") or {}).values():
        if (node_type.get("docker") or {}).get("worker_image"):
            tags.append(node_type["docker"]["worker_image"])
    return tags


def shell_lines(command: str) -> list[str]:
    """One setup command as the shell lines it runs."""
    return [part.strip() for part in re.split(r"&&|;|\n", command) if part.strip()]


def effective_setup(prepared: dict) -> dict[str, list[str]]:
    """Shell lines each kind of node runs (prepare_config merged setup_commands in already)."""
    kinds = {"head": prepared["head_setup_commands"], "worker": prepared["worker_setup_commands"]}
    for name, node_type in prepared["available_node_types"].items():
        if "worker_setup_commands" in node_type:  # replaces setup + worker_setup entirely
            kinds[f"worker:{name}"] = node_type["worker_setup_commands"]
    return {kind: [ln for cmd in cmds for ln in shell_lines(cmd)] for kind, cmds in kinds.items()}


# --------------------------------------------------------------------------- shipped files


def test_every_expected_cluster_file_is_shipped():
    assert set(EXPECTED_PROVIDERS) <= set(ids(CLUSTER_FILES))


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=ids(CLUSTER_FILES))
def test_cluster_file_passes_ray_up_validation(path):
    config = load(path)
    assert config["provider"]["type"] == EXPECTED_PROVIDERS.get(path.name, config["provider"]["type"])
    prepared = ray_up_validate(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_installed_ray_is_in_the_supported_range():
    """The schema these tests validate against must be one of a Ray the cluster may run."""
    import ray

    assert ray.__version__ in ray_range()


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=ids(CLUSTER_FILES))
def test_docker_image_is_a_supported_ray_release(path):
    from packaging.specifiers import SpecifierSet

    tags = image_tags(load(path))
    assert tags, f"{path.name}: no docker image configured"
    requires_python = SpecifierSet(tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"])
    for tag in tags:
        m = IMAGE_TAG.match(tag)
        assert m, f"{path.name}: cannot read the Ray and Python versions from image {tag!r}"
        assert m["ray"] in ray_range(), f"{path.name}: image {tag} vs ray{ray_range()} in pyproject.toml"
        python = f"{m['py'][0]}.{m['py'][1:]}"
        assert python in requires_python, f"{path.name}: image Python {python} vs {requires_python}"


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=ids(CLUSTER_FILES))
def test_setup_installs_a_pinned_torch_then_the_package_with_its_dependencies(path):
    """Every node: torch first (one build on all nodes), then plain `pip install -e .` (no --no-deps)."""
    prepared = ray_up_validate(load(path))
    for kind, lines in effective_setup(prepared).items():
        installs = [ln for ln in lines if PIP_INSTALL.search(ln)]
        torch = [i for i, ln in enumerate(installs) if re.search(r"\btorch==", ln)]
        package = [i for i, ln in enumerate(installs) if shlex.split(ln)[-2:] == ["-e", "."]]
        assert torch and package, f"{path.name} ({kind}): `pip install torch==...` / `pip install -e .` missing"
        assert max(torch) < min(package), f"{path.name} ({kind}): install torch before the package"
        assert not [ln for ln in installs if "--no-deps" in shlex.split(ln)], f"{path.name} ({kind}): --no-deps"


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=ids(CLUSTER_FILES))
def test_setup_runs_the_install_from_the_mounted_repository(path):
    config = load(path)
    repo_mounts = [
        remote for remote, local in config["file_mounts"].items() if (REPO_ROOT / local).resolve() == REPO_ROOT
    ]
    assert repo_mounts, f"{path.name}: the repository root is not in file_mounts"
    commands = " ".join(config["setup_commands"])
    assert any(re.search(rf"cd {re.escape(remote)}\s*&&.*\bpip install -e \.", commands) for remote in repo_mounts), (
        f"{path.name}: setup_commands do not `pip install -e .` in {repo_mounts}"
    )
    assert ".gitignore" in config.get("rsync_filter", []), f"{path.name}: would upload .venv etc."


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=ids(CLUSTER_FILES))
def test_token_authentication_on_every_node(path):
    config = load(path)
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    assert all("RAY_AUTH_MODE=token" in c for c in ray_starts), f"{path.name}: ray start without token auth"
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    if config.get("docker"):
        assert "--env RAY_AUTH_MODE=token" in config["docker"].get("run_options", [])


@pytest.mark.parametrize("path", CLOUD_FILES, ids=ids(CLOUD_FILES))
def test_cloud_head_has_no_gpu_and_workers_do(path):
    prepared = ray_up_validate(load(path))
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["max_workers"] == 0
    workers = [t for name, t in types.items() if name != prepared["head_node_type"]]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers)
    assert all(t["min_workers"] == 0 for t in workers), "idle clusters should cost only the head"


def test_docs_cover_every_cluster_file():
    text = DOCS.read_text()
    for path in CLUSTER_FILES:
        assert f"ray up {path.name}" in text, f"docs/CLUSTER.md never shows `ray up {path.name}`"
    assert "ray get-auth-token" in text and "RAY_AUTH_MODE=token" in text


# --------------------------------------------------------------------------- broken copies


def _rename_top_level(key: str, typo: str):
    def mutate(config: dict) -> None:
        config[typo] = config.pop(key)

    return mutate


def _rename_in_node_type(key: str, typo: str):
    def mutate(config: dict) -> None:
        workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
        workers[0][typo] = workers[0].pop(key)

    return mutate


def _rename_in_docker(key: str, typo: str):
    def mutate(config: dict) -> None:
        config["docker"][typo] = config["docker"].pop(key)

    return mutate


def _unknown_head_type(config: dict) -> None:
    config["head_node_type"] = "no_such_type"


def _string_idle_timeout(config: dict) -> None:
    config["idle_timeout_minutes"] = "ten"


BREAKAGES = {
    "typo-top-level-key": (_rename_top_level("setup_commands", "setup_comands"), None),
    "typo-docker-key": (_rename_in_docker("pull_before_run", "pull_before_runn"), None),
    "wrong-type": (_string_idle_timeout, None),
    "typo-node-type-key": (_rename_in_node_type("min_workers", "min_worker"), "cloud"),
    "unknown-head-node-type": (_unknown_head_type, "cloud"),
}
BROKEN_CASES = [
    pytest.param(path, name, id=f"{path.name}-{name}")
    for path in CLUSTER_FILES
    for name, (_, only) in BREAKAGES.items()
    if only is None or path in CLOUD_FILES
]


@pytest.mark.parametrize("path, breakage", BROKEN_CASES)
def test_broken_copy_fails_validation(path, breakage, tmp_path):
    """The check has teeth: a damaged copy of each shipped file must be rejected."""
    import click
    import jsonschema

    config = load(path)
    mutate, _ = BREAKAGES[breakage]
    mutate(config)
    broken = tmp_path / path.name
    broken.write_text(yaml.safe_dump(config, sort_keys=False))

    with pytest.raises((jsonschema.ValidationError, ValueError, click.ClickException)):
        ray_up_validate(load(broken))


def test_unknown_provider_type_fails(tmp_path):
    config = load(REPO_ROOT / "cluster.yaml")
    config["provider"]["type"] = "awz"
    broken = tmp_path / "cluster.yaml"
    broken.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="unknown provider type"):
        ray_up_validate(load(broken))
