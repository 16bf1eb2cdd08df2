"""Every shipped config and search space runs for real: a config trains a DP step, a space runs a trial.

The files are globbed, so a new file is covered without editing this test. Each run keeps the
file's keys, model, data set and other settings and overrides only sizes (steps, batch, subsets,
the validation count) and, for spaces written for a GPU cluster, the per-trial resources. The data
is the file's own data set: CIFAR-10 from ../shared/data when it is there, else small files in the
official binary layout written here; MNIST always as small IDX files written here (../shared holds
only the MNIST test set), so nothing is skipped in a clone without ../shared.

The paper's model runs at its full width: one DP step at batch 16 with K=4 costs a few CPU seconds
(measured 2026-12-01 on the shared 2-core development machine: building the D4 layout-16/32/64
eq_resnet9 3.4 s CPU, a forward and backward pass of 64 augmented CIFAR images 3.2 s CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eqdp_ray.cli import main
from eqdp_ray.config import load_config
from eqdp_ray.config.space import load_space
from tests.data.formats import write_cifar10_bin, write_mnist

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar-10-batches-bin"

TRAIN_SUBSET, TEST_SUBSET, VAL_SIZE, BATCH = 48, 16, 16, 16
# Count sizes are shares of a data set's official training size, not of the copy's (a threshold
# that moved with the private data would break the neighbouring relation, docs/PRIVACY.md). On the
# small copies written here (SMALL_TRAIN training records) the counts are scaled up accordingly.
SMALL_TRAIN = 100
OFFICIAL_TRAIN = {"mnist": 60_000, "rotated_mnist": 60_000, "cifar10": 50_000}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A data root holding every data set the shipped files name, in the official layouts."""
    root = tmp_path_factory.mktemp("data")
    if (SHARED_CIFAR10 / "data_batch_1.bin").is_file():
        (root / "cifar-10-batches-bin").symlink_to(SHARED_CIFAR10, target_is_directory=True)
    else:
        write_cifar10_bin(root / "cifar-10-batches-bin", n_per_batch=SMALL_TRAIN // 5)  # + 20 test records
    write_mnist(root / "mnist", n_train=SMALL_TRAIN, n_test=20, gz=True)
    return root


def _data_overrides(prefix: str, root: Path, name: str) -> list[str]:
    small = name in ("mnist", "rotated_mnist") or (
        name == "cifar10" and not (SHARED_CIFAR10 / "data_batch_1.bin").is_file()
    )
    scale = OFFICIAL_TRAIN[name] // SMALL_TRAIN if small else 1
    return [
        f"{prefix}root={root}",
        f"{prefix}download=false",
        f"{prefix}val_size={VAL_SIZE * scale}",
        f"{prefix}train_subset={TRAIN_SUBSET * scale}",
        f"{prefix}test_subset={TEST_SUBSET}",
    ]


def test_every_shipped_file_is_found():
    assert {p.stem for p in CONFIGS} >= {"quickstart", "cifar10_eps8_paper", "cifar10_small_cpu", "rotated_mnist"}
    assert {p.stem for p in SPACES} >= {"quickstart", "cifar10_eps8", "cifar10_eps1", "rotated_mnist"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_trains_a_dp_step(path, data_root, tmp_path, capsys):
    as_shipped = load_config(path)  # the file itself parses, with its own sizes (e.g. val_size: 5000, a count)
    length = ["training.steps=1", "training.epochs=null"] if as_shipped.training.epochs else ["training.steps=1"]
    sizes = [f"training.batch_size={BATCH}", "training.physical_batch_size=32", "training.eval_batch_size=64"]
    overrides = [*_data_overrides("data.", data_root, as_shipped.data.name), *length, *sizes, "device=cpu"]
    args = ["train", str(path), "--output", str(tmp_path / "run")]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["steps"] == 1 and result["dataset"] == as_shipped.data.name
    assert 0 < result["epsilon"] <= as_shipped.privacy.target_epsilon
    assert result["config"]["model"] == as_shipped.model.model_dump()  # the file's own model


def _hold(space, key: str, value) -> str:
    """An override that holds a config key at one value, whether the space fixes or searches it."""
    if key in space.search:
        return f"search.{key}={{type: categorical, choices: [{json.dumps(value)}]}}"
    return f"fixed.{key}={json.dumps(value)}"


def _space_overrides(path: Path, root: Path) -> list[str]:
    space = load_space(path)  # the file itself parses, as shipped
    by_steps = "training.steps" in space.fixed or "training.steps" in space.search
    # 1 step: by steps, or by the fraction of an epoch that makes one expected batch
    length = _hold(space, "training.steps", 1) if by_steps else _hold(space, "training.epochs", BATCH / TRAIN_SUBSET)
    out = [*_data_overrides("data.", root, space.data.get("name", "digits")), length]
    out += [_hold(space, k, v) for k, v in (("training.batch_size", BATCH), ("training.eval_every", 1))]
    out += [_hold(space, k, v) for k, v in (("training.physical_batch_size", 32), ("training.eval_batch_size", 64))]
    if "training.augmult" in space.search:
        out.append(_hold(space, "training.augmult", min(space.search["training.augmult"].corners())))
    out += ["resources.workers=1", "resources.cpus_per_worker=1", "resources.gpus_per_worker=0", "max_concurrent=1"]
    # scope search: the score noise is a fraction of the validation size; on a dozen validation
    # images the shipped fractions (0.5-5%) would be a fraction of one count, which no budget pays
    out.append("privacy.validation_noise=0.5")
    if space.private_selection:
        out.append("num_samples.mean=1.01")  # still a random count (the file's own kind), almost surely 1
    else:
        out.append("num_samples=1")
    return out


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_shipped_space_checks_and_runs_a_trial(path, data_root, tmp_path, capsys, local_ray):
    overrides = [a for item in _space_overrides(path, data_root) for a in ("--set", item)]
    assert main(["tune", str(path), "--check", *overrides]) == 0, capsys.readouterr().err
    store = tmp_path / "store"
    assert main(["tune", str(path), "--store", str(store), *overrides]) == 0, capsys.readouterr().err
    from eqdp_ray.results import ResultsStore

    study = yaml.safe_load(path.read_text())["study"]
    trials = ResultsStore(str(store)).read_trials(study)
    assert len(trials) >= 1 and set(trials["status"]) <= {"completed", "stopped"}, trials.to_dict("records")
    assert (trials["epsilon"] <= load_space(path).privacy["target_epsilon"] + 1e-9).all()
