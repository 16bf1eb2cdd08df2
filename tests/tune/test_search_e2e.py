"""A real search on a real local Ray: Tune + Optuna + ASHA, rows in a real Parquet store, resume."""

import optuna
import pytest

from eqdp_ray.results import ResultsStore
from eqdp_ray.tune import load_space, run_search
from eqdp_ray.tune.runner import DefineByRun
from tests.tune.conftest import tiny_study

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")


def e2e_space(study, **changes):
    return tiny_study(
        study,
        privacy={"target_epsilon": 4.0, "delta": 1e-5, "scope": "trial"},  # scope search: test_search_scope
        sampler={"type": "random", "seed": 0},
        **changes,
    )


def test_search_writes_rows_asha_stops_and_resume_does_not_duplicate(tmp_path, local_ray):
    space = e2e_space("e2e")
    # Precondition of this test (not of the code): seed 0 draws both step counts.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for _ in range(3):
        trial = study.ask()
        DefineByRun(load_space(space))(trial)
        drawn.append(trial.params["training.steps"])
    assert set(drawn) == {4, 12}

    store_dir = tmp_path / "store"
    summary = run_search(space, store=str(store_dir), log=lambda _m: None)
    store = ResultsStore(str(store_dir))
    trials = store.read_trials("e2e")

    assert len(trials) == 3 and trials["trial_id"].is_unique
    assert set(trials["status"]) == {"completed", "stopped_early"}
    assert (trials["epsilon"] <= trials["target_epsilon"] + 1e-9).all() and (trials["target_epsilon"] == 4.0).all()
    assert trials["sigma"].notna().all() and trials["sample_rate"].notna().all()
    assert trials["search_epsilon"].isna().all()  # ASHA: adaptive, no search-level bound
    done = trials[trials["status"] == "completed"]
    stopped = trials[trials["status"] == "stopped_early"]
    assert (done["steps"] == 4).all() and done["test_accuracy"].notna().all()
    assert (stopped["steps"] < 12).all() and (stopped["planned_steps"] == 12).all()
    assert stopped["test_accuracy"].isna().all()  # stopped trials are never tested
    assert (trials["config.training.steps"] == [{4: 4, 12: 12}[s] for s in trials["config.training.steps"]]).all()
    assert set(trials["config.model.name"]) == {"resnet9"}
    assert (trials["group"] == "").all()  # every row, stopped ones too, says the model has no group

    history = store.read_history("e2e")
    assert set(history["trial_id"]) == set(trials["trial_id"])
    assert not history.duplicated(["trial_id", "step"]).any()
    assert (history["epsilon"] <= 4.0 + 1e-9).all()
    assert summary.status_counts == trials["status"].value_counts().to_dict() and summary.top

    # Resuming a finished study re-runs nothing and adds no row.
    before = store.read_trials("e2e", latest_only=False)
    run_search(space, store=str(store_dir), resume=True, log=lambda _m: None)
    after = store.read_trials("e2e", latest_only=False)
    assert len(after) == len(before)
    assert sorted(after["written_at"]) == sorted(before["written_at"])

    with pytest.raises(Exception, match="already has an experiment"):
        run_search(space, store=str(store_dir), log=lambda _m: None)


def test_multi_worker_multi_objective_trial(tmp_path, local_ray):
    """A trial with 2 workers launches its own TorchTrainer; two objectives give a Pareto front."""
    space = e2e_space(
        "e2e_dist",
        resources={"workers": 2, "cpus_per_worker": 1},
        num_samples=1,
        max_concurrent=1,
        scheduler={"type": "none"},
        objectives=[{"metric": "val_accuracy", "mode": "max"}, {"metric": "num_params", "mode": "min"}],
        search={"training.lr": {"type": "float", "low": 0.5, "high": 2.0}},
    )
    space["fixed"].update({"training.steps": 4, "training.batch_size": 64})
    summary = run_search(space, store=str(tmp_path / "store"), log=lambda _m: None)
    trials = ResultsStore(str(tmp_path / "store")).read_trials("e2e_dist")
    assert list(trials["status"]) == ["completed"] and list(trials["workers"]) == [2]
    assert trials["epsilon"].item() <= 4.0 and trials["steps"].item() == 4 and trials["num_params"].item() > 0
    assert [r["trial_id"] for r in summary.pareto] == list(trials["trial_id"])
