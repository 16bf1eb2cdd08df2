"""The ledger keeper: one Ray actor per study; the store is the truth across a driver restart."""

import pytest

from eqdp_ray.privacy.search import SearchLedger, TrialShape, plan_search
from eqdp_ray.results import ResultsStore
from eqdp_ray.tune.ledger import LedgerKeeper, ledger_summary, start_keeper

SHAPE = TrialShape(0.1, 100, 2)


@pytest.fixture()
def plan():
    return plan_search(4.0, 1e-5, [SHAPE], max_trials=2, score_noise=10.0)


def test_keeper_reserves_settles_and_rebuilds_from_the_store(tmp_path, plan):
    keeper = LedgerKeeper("s", str(tmp_path), plan.to_dict())
    worst = plan.mechanism_for(SHAPE).to_dict()
    assert keeper.reserve("a", worst) == 1
    assert keeper.reserve("b", worst) == 1
    assert keeper.reserve("c", worst) is None  # two trials planned: a third has no room
    keeper.settle("a", None, {**worst, "steps": 30, "score_releases": 1})  # stopped early
    # a new driver: the keeper rebuilt from the store sees the same ledger; b never settled
    again = LedgerKeeper("s", str(tmp_path), plan.to_dict())
    assert again.summary() == keeper.summary()
    summary = again.summary()
    assert summary["unsettled"] == 1 and summary["attempts"] == 2
    assert summary["epsilon_spent"] <= summary["guarantee"] <= 4.0
    rebuilt = SearchLedger.from_events(plan, ResultsStore(tmp_path).read_ledger("s").to_dict("records"))
    assert ledger_summary(rebuilt) == summary
    assert summary["trials"]["a"] < summary["trials"]["b"]


@pytest.mark.ray
def test_keeper_runs_as_a_named_actor(tmp_path, plan):
    import ray

    ray.init(num_cpus=1, include_dashboard=False, namespace="ledger-test")
    try:
        keeper = start_keeper("s", str(tmp_path), plan)
        worst = plan.mechanism_for(SHAPE).to_dict()
        assert ray.get(keeper.reserve.remote("a", worst)) == 1
        replaced = start_keeper("s", str(tmp_path), plan)  # the old one is killed, the new one reads the store
        assert ray.get(replaced.reserve.remote("a", worst)) == 2
        assert ray.get(replaced.reserve.remote("b", worst)) is None
        assert ray.get(replaced.summary.remote())["attempts"] == 2
    finally:
        ray.shutdown()
