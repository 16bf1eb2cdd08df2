"""run_search before any trial: what it refuses, and that a refused start leaves the disk as it was."""

import socket

import pytest

from eqdp_ray.tune import SpaceError, run_search

SPACE = {
    "study": "nowrite",
    "privacy": {"target_epsilon": 4.0, "delta": 1e-5},
    "data": {"name": "digits", "train_subset": 300},
    "fixed": {"model.name": "resnet9", "model.options.width": 0.125, "training.steps": 4},
    "search": {"training.lr": {"type": "float", "low": 0.5, "high": 2.0}},
    "resources": {"workers": 1, "cpus_per_worker": 1},
    "sampler": {"type": "random", "seed": 0},
    "num_samples": 2,
}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_cluster_writes_nothing_and_can_be_rerun(tmp_path):
    store = tmp_path / "store"
    for _ in range(2):  # the second attempt must fail the same way, not with "already has an experiment"
        with pytest.raises(SpaceError, match="cannot reach the Ray cluster"):
            run_search(SPACE, store=str(store), address=f"127.0.0.1:{closed_port()}", log=lambda _m: None)
        assert list(tmp_path.iterdir()) == []


def test_more_workers_than_cores_is_refused_unless_asked_for(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    space = dict(SPACE, resources={"workers": 64, "cpus_per_worker": 1}, max_concurrent=1)
    with pytest.raises(SpaceError, match="64 workers x 1 CPU need 64 CPUs .* pass --oversubscribe"):
        run_search(space, store=str(tmp_path / "store"), log=lambda _m: None)
    assert list(tmp_path.iterdir()) == []
