"""A driver killed while Tune uploads its state leaves a truncated file; resuming finishes the upload.

Without the repair Tune fails to load the file, logs "Restarting experiment" and waits forever:
each resume here runs under a timeout, so that failure is a failed test, not a hung suite.
"""

import json
import pickle
from pathlib import Path

import pytest
import ray

from eqdp_ray.config import SpaceError
from eqdp_ray.results import ResultsStore
from eqdp_ray.tune import run_search
from eqdp_ray.tune.interrupted_upload import damaged_state_files, is_complete, staging_directories
from tests.tune.conftest import TINY_FIXED, tiny_study

pytestmark = pytest.mark.ray

SPACE = tiny_study(
    "cutoff",
    privacy={"target_epsilon": 4.0, "delta": 1e-5, "scope": "trial"},
    fixed={**TINY_FIXED, "training.steps": 4},
    search={"training.lr": {"type": "float", "low": 0.5, "high": 2.0, "log": True}},
    sampler={"type": "random", "seed": 0},
    num_samples=2,
    scheduler={"type": "none"},
    max_concurrent=1,
)


def test_whole_and_cut_off_state_files_are_told_apart():
    state = pickle.dumps({"trials": list(range(500)), "name": "x" * 300})
    assert is_complete(state)
    for cut in (1, len(state) // 2, len(state) - 1):
        assert not is_complete(state[:cut])
    text = json.dumps({"trial_data": [{"id": i} for i in range(50)]}).encode()
    assert is_complete(text) and not is_complete(text[:-5]) and not is_complete(b"")


def newest_searcher_state(experiment: Path) -> Path:
    return max(experiment.glob("searcher-state-*.pkl"))


def ray_temp_dir() -> str:
    return str(Path(ray._private.worker._global_node.get_session_dir_path()).parent)


@pytest.mark.timeout(420)
def test_a_cut_off_searcher_state_is_uploaded_again_and_the_study_resumes(tmp_path, local_ray):
    store_dir = tmp_path / "store"
    run_search(SPACE, store=str(store_dir), log=lambda _m: None)
    store = ResultsStore(str(store_dir))
    before = store.read_trials("cutoff")
    experiment = store_dir / "experiments" / "cutoff"

    # the kill's mark: the searcher state Tune will read, cut off in the middle
    state = newest_searcher_state(experiment)
    whole = state.read_bytes()
    state.write_bytes(whole[: len(whole) // 2])
    assert damaged_state_files(str(experiment)) == [state.name]

    run_search(SPACE, store=str(store_dir), resume=True, log=lambda _m: None)

    assert damaged_state_files(str(experiment)) == []
    assert state.read_bytes() == whole  # the driver's staging copy, uploaded again
    after = store.read_trials("cutoff")
    assert len(after) == 2 and sorted(after["written_at"]) == sorted(before["written_at"])  # nothing re-ran


@pytest.mark.timeout(420)
def test_without_the_drivers_copy_resume_stops_with_one_clear_error_and_changes_nothing(tmp_path, local_ray):
    space = {**SPACE, "study": "cutoff_elsewhere"}
    store_dir = tmp_path / "store"
    run_search(space, store=str(store_dir), log=lambda _m: None)
    experiment = store_dir / "experiments" / "cutoff_elsewhere"
    state = newest_searcher_state(experiment)
    state.write_bytes(state.read_bytes()[:100])
    # resuming on another machine: the killed driver's staging copies are not there
    for directory in staging_directories("cutoff_elsewhere", ray_temp_dir()):
        (directory / state.name).unlink(missing_ok=True)
    cut = {p.name: p.read_bytes() for p in experiment.rglob("*") if p.is_file()}

    with pytest.raises(SpaceError, match="cannot resume study 'cutoff_elsewhere'.*searcher-state.*nothing was changed"):
        run_search(space, store=str(store_dir), resume=True, log=lambda _m: None)

    assert {p.name: p.read_bytes() for p in experiment.rglob("*") if p.is_file()} == cut
