"""Budget scope `search` end to end: a real adaptive study (TPE + ASHA) on a real local Ray.

Checks the search-level epsilon against Google's dp_accounting fed with what the ledger says the
trials ran, and that no unnoised training metric reaches the store, Tune's result files or logs.
"""

import json
import signal
from collections import Counter
from pathlib import Path

import pytest
from dp_accounting import ComposedDpEvent, GaussianDpEvent, PoissonSampledDpEvent, SelfComposedDpEvent
from dp_accounting.rdp import RdpAccountant

from eqdp_ray.privacy.rdp import ORDERS
from eqdp_ray.privacy.search import SearchPlan, TrialMechanism
from eqdp_ray.results import ResultsStore
from eqdp_ray.tune import run_search
from tests.tune.conftest import interrupt_driver, tiny_study, write_study

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")

SPACE = tiny_study(
    "scoped",
    privacy={"target_epsilon": 4.0, "delta": 1e-5, "validation_noise": 0.05},
    sampler={"type": "tpe", "seed": 0, "n_startup_trials": 2},
)


def dp_accounting_epsilon(mechanisms, delta):
    acc = RdpAccountant(orders=ORDERS)
    for m, count in Counter(mechanisms).items():
        events = [
            SelfComposedDpEvent(PoissonSampledDpEvent(m.sample_rate, GaussianDpEvent(m.noise_multiplier)), m.steps)
        ]
        if m.score_releases:
            events.append(SelfComposedDpEvent(GaussianDpEvent(m.score_noise), m.score_releases))
        acc.compose(ComposedDpEvent(events), count)
    return acc.get_epsilon(delta)


def counted(events):
    """Each attempt as the ledger counts it: settled at what it ran, else at its reservation."""
    by_attempt = {}
    for e in events:
        if e["event"] in ("reserve", "settle"):
            by_attempt[(e["trial_id"], e["attempt"])] = TrialMechanism.from_dict(e)  # write order: settle wins
    return by_attempt


def test_adaptive_study_is_accounted_as_dp_accounting_composes_it_and_leaks_no_training_metric(tmp_path, local_ray):
    store_dir = tmp_path / "store"
    lines = []
    summary = run_search(SPACE, store=str(store_dir), log=lines.append)
    store = ResultsStore(str(store_dir))
    trials = store.read_trials("scoped")
    events = store.read_ledger("scoped").to_dict("records")
    plan = SearchPlan.from_dict(json.loads(next(e["plan_json"] for e in events if e["event"] == "plan")))

    # every trial that ran is in the ledger, and the study's numbers are those dp_accounting composes
    attempts = counted(events)
    assert {t for t, _ in attempts} == set(trials["trial_id"]) and len(trials) == 3
    spent = dp_accounting_epsilon(list(attempts.values()), 1e-5)
    assert summary.ledger["epsilon_spent"] == pytest.approx(spent, rel=0.01)
    worst = max(
        dp_accounting_epsilon([plan.mechanism_for(s)] * 3, 1e-5) for s in summary_shapes(plan)
    )  # the filter's budget: 3 trials of the costliest shape
    assert plan.epsilon == pytest.approx(worst, rel=0.01) and plan.epsilon <= 4.0
    assert summary.ledger["guarantee"] == plan.epsilon and spent <= plan.epsilon + 1e-9
    assert (trials["search_epsilon"] == plan.epsilon).all() and (trials["budget_scope"] == "search").all()
    assert (trials["search_method"] == "composition").all()
    assert (
        trials["trial_search_epsilon"].notna().all()
        and (trials["trial_search_epsilon"] <= plan.trial_epsilon + 1e-9).all()
    )
    assert set(trials["status"]) <= {"completed", "stopped_early"}

    # nothing unnoised about training leaves a trial: store, Tune's result files, logs
    history = store.read_history("scoped")
    assert not history.empty and history["train_loss"].isna().all() and history["train_accuracy"].isna().all()
    assert "train_loss" not in trials.columns or trials["train_loss"].isna().all()
    experiment = store_dir / "experiments" / "scoped"
    results = list(experiment.rglob("result.json"))
    assert results
    for path in results:
        for line in path.read_text().splitlines():
            result = json.loads(line)
            assert "val_accuracy" in result or "infeasible" in result
            assert not {"train_loss", "train_accuracy"} & set(result), path
    for path in experiment.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"train_loss" not in data and b"train_accuracy" not in data, path
    session = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    for path in session.rglob("worker-*"):
        assert "train acc " not in path.read_text(errors="replace"), path
    assert any("validation scores noised" in line for line in lines)
    # and the noise is there: released scores are not multiples of 1/n_val
    n_val = round(plan.score_noise / 0.05)
    assert any(abs(v * n_val - round(v * n_val)) > 1e-6 for v in history["val_accuracy"])


def summary_shapes(plan):
    from eqdp_ray.privacy.search import TrialShape

    shapes = []
    for key in plan.sigmas:
        q, t, r = key.split("/")
        shapes.append(TrialShape(float(q), int(t), int(r)))
    return shapes


KILL_SPACE = {
    **SPACE,
    "study": "killed",
    "fixed": {**SPACE["fixed"], "training.steps": 160, "training.eval_every": 20},
    "search": {"training.lr": {"type": "float", "low": 0.5, "high": 2.0, "log": True}},
    "scheduler": {"type": "none"},
    "max_concurrent": 1,
}


def test_a_killed_and_resumed_study_counts_every_attempt_and_stays_within_its_target(tmp_path):
    """SIGKILL the driver while a trial trains, resume: the killed attempt counts its reservation, nothing exceeds."""
    space_file, store_dir, store = write_study(tmp_path, KILL_SPACE)

    def a_trial_settled_and_another_runs():
        if (store_dir / "ledger").exists() and (store_dir / "trials").exists():
            events = store.read_ledger("killed")
            rows = store.read_trials("killed")
            settled = set(events.loc[events["event"] == "settle", "trial_id"])
            running = set(rows.loc[rows["status"] == "running", "trial_id"]) - settled
            if settled and running:
                return True
        return None

    # the driver dies without a word, once the running trial has checkpointed a few passes
    interrupt_driver(
        space_file, store_dir, a_trial_settled_and_another_runs, sig=signal.SIGKILL, settle_s=3.0, deadline_s=300
    )
    before = store.read_ledger("killed")
    unsettled = set(before.loc[before["event"] == "reserve", "trial_id"]) - set(
        before.loc[before["event"] == "settle", "trial_id"]
    )
    assert unsettled, "the kill came too late to test anything"

    summary = run_search(str(space_file), store=str(store_dir), resume=True, log=lambda _m: None)

    events = store.read_ledger("killed").to_dict("records")
    attempts = counted(events)
    trials = store.read_trials("killed")
    plan = SearchPlan.from_dict(json.loads(next(e["plan_json"] for e in events if e["event"] == "plan")))
    # the killed attempt is still in the ledger, at its reservation (it never settled)
    for trial_id in unsettled:
        first = [e for e in events if e["trial_id"] == trial_id and e["attempt"] == 1]
        assert [e["event"] for e in first] == ["reserve"]
    assert {t for t, _ in attempts} >= set(trials.loc[trials["steps"] > 0, "trial_id"])
    spent = dp_accounting_epsilon(list(attempts.values()), 1e-5)
    assert summary.ledger["epsilon_spent"] == pytest.approx(spent, rel=0.01)
    assert spent <= plan.epsilon + 1e-9 <= 4.0 + 1e-9 and summary.ledger["guarantee"] == plan.epsilon
    # three planned trials plus a restart do not fit: what did not fit was refused before touching the data
    refused = trials[trials["error"].fillna("").str.startswith("refused")]
    assert len(refused) >= 1 and (refused["steps"] == 0).all()
