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


PS_SPACE = {
    "study": "ps",
    "privacy": {"target_epsilon": 8.0, "delta": 1e-5, "accountant": "rdp", "validation_noise": 0.05},
    "data": {"name": "digits", "val_size": 0.1},
    "fixed": {"training.steps": 2, "training.eval_every": 2, "training.physical_batch_size": 256},
    "search": {
        "training.batch_size": {"type": "categorical", "choices": [32, 64]},
        "training.lr": {"type": "loguniform", "low": 0.5, "high": 4.0},
    },
    "sampler": {"type": "random"},
    "scheduler": {"type": "none"},
    "num_samples": {"distribution": "truncated_negative_binomial", "mean": 3, "eta": 1},
}


def _plan(tmp_path, scope):
    from eqdp_ray.config.space import load_space
    from eqdp_ray.tune.runner import plan_study

    space = load_space({**PS_SPACE, "privacy": {**PS_SPACE["privacy"], "scope": scope}})
    return plan_study(space, store=str(tmp_path / "store"), storage_path=None, resume=False, log=lambda _m: None)


def test_scope_trial_random_count_records_and_reports_no_search_bound(tmp_path):
    """Each trial of scope trial releases exact scores: the Papernot-Steinke bound does not cover that."""
    plan = _plan(tmp_path, "trial")
    assert plan.search_epsilon is None and plan.search_delta is None  # what every trial row carries
    assert plan.privacy is None and "NOT covered" in plan.note and "Theorem" not in plan.note


def test_scope_search_random_count_says_the_bound_covers_only_the_best_trial(tmp_path):
    plan = _plan(tmp_path, "search")
    assert plan.search_epsilon == plan.budget.plan.epsilon and plan.budget.plan.method == "papernot_steinke"
    assert "best trial's configuration, score and model only" in plan.note and "whole study" not in plan.note
    assert "the number of trials or attempts" in plan.note
