"""The search-level accountant: composition, calibration and the ledger, checked with dp_accounting."""

import random

import numpy as np
import pytest
from dp_accounting import (
    ComposedDpEvent,
    GaussianDpEvent,
    PoissonSampledDpEvent,
    SelfComposedDpEvent,
)
from dp_accounting.dp_event import RepeatAndSelectDpEvent
from dp_accounting.rdp import RdpAccountant

from eqdp_ray.privacy import PrivacyBudgetError
from eqdp_ray.privacy.rdp import ORDERS, rdp_to_epsilon
from eqdp_ray.privacy.search import (
    PAPERNOT_STEINKE,
    SearchLedger,
    TrialMechanism,
    TrialShape,
    compose,
    composition_epsilon,
    plan_search,
)


def trial_event(m: TrialMechanism):
    """A trial as dp_accounting describes it: its DP-SGD steps, then its noisy scores."""
    events = [SelfComposedDpEvent(PoissonSampledDpEvent(m.sample_rate, GaussianDpEvent(m.noise_multiplier)), m.steps)]
    if m.score_releases:
        events.append(SelfComposedDpEvent(GaussianDpEvent(m.score_noise), m.score_releases))
    return ComposedDpEvent(events)


def dp_accounting_epsilon(mechanisms, delta, orders=ORDERS):
    from collections import Counter

    acc = RdpAccountant(orders=orders) if orders is not None else RdpAccountant()
    for m, count in Counter(mechanisms).items():  # identical trials composed at once: same sum, faster
        acc.compose(trial_event(m), count)
    return acc.get_epsilon(delta)


def test_heterogeneous_composition_matches_dp_accounting():
    rng = random.Random(3)
    trials = [
        TrialMechanism(
            rng.uniform(0.7, 5.0),
            rng.choice([0.01, 0.05, 0.2]),
            rng.choice([10, 100, 800]),
            rng.uniform(5, 60),
            rng.choice([0, 1, 4, 20]),
        )
        for _ in range(9)
    ]
    for delta in (1e-5, 1e-6):
        ours = composition_epsilon(trials, delta)
        assert ours == pytest.approx(dp_accounting_epsilon(trials, delta), rel=1e-6)
        # against dp_accounting's own (denser, fractional) orders: within 1%, and never below it
        theirs = dp_accounting_epsilon(trials, delta, orders=None)
        assert ours == pytest.approx(theirs, rel=0.01) and ours >= theirs - 1e-9


def test_scores_cost_privacy():
    quiet = TrialMechanism(2.0, 0.05, 200)
    loud = TrialMechanism(2.0, 0.05, 200, score_noise=3.0, score_releases=10)
    assert composition_epsilon([loud], 1e-5) > composition_epsilon([quiet], 1e-5)
    with pytest.raises(PrivacyBudgetError):
        TrialMechanism(2.0, 0.05, 200, score_noise=None, score_releases=1)


SHAPES = [TrialShape(64 / 1300, 600, 4), TrialShape(128 / 1300, 300, 4), TrialShape(256 / 1300, 150, 4)]


@pytest.mark.parametrize("target,max_trials,score_noise", [(8.0, 8, 20.0), (1.0, 4, 80.0), (8.0, 32, 20.0)])
def test_calibration_never_overshoots_and_is_tight(target, max_trials, score_noise):
    plan = plan_search(target, 1e-5, SHAPES, max_trials=max_trials, score_noise=score_noise)
    assert plan.epsilon <= target and plan.epsilon >= 0.99 * target
    for shape in SHAPES:
        worst = [plan.mechanism_for(shape)] * max_trials  # the study runs its most trials, all of this shape
        assert dp_accounting_epsilon(worst, 1e-5) <= target * (1 + 1e-9)
    rng = random.Random(0)  # any mixture of shapes, adaptively chosen or not, stays inside too
    for _ in range(5):
        mixed = [plan.mechanism_for(rng.choice(SHAPES)) for _ in range(max_trials)]
        assert dp_accounting_epsilon(mixed, 1e-5) <= target * (1 + 1e-9)
        assert np.all(compose(mixed) <= np.asarray(plan.budget_rdp) * (1 + 1e-9))
    # each shape alone is at the per-trial epsilon the plan states
    for shape in SHAPES:
        alone = dp_accounting_epsilon([plan.mechanism_for(shape)], 1e-5)
        assert alone <= plan.trial_epsilon * (1 + 1e-6) and alone >= 0.98 * plan.trial_epsilon


def test_one_trial_one_shape_is_plain_calibration():
    from eqdp_ray.privacy import plan_privacy

    shape = TrialShape(0.05, 400)
    plan = plan_search(4.0, 1e-5, [shape], max_trials=1)
    single = plan_privacy(4.0, 1e-5, 0.05, 400)
    assert plan.sigma_for(shape) == pytest.approx(single.noise_multiplier, rel=0.02)


def test_too_many_score_releases_is_one_clear_error():
    with pytest.raises(PrivacyBudgetError, match="validation scores alone"):
        plan_search(1.0, 1e-5, [TrialShape(0.05, 100, 50)], max_trials=20, score_noise=1.0)


@pytest.mark.parametrize(
    "target,delta,match",
    [(0.0, 1e-5, "target epsilon"), (float("inf"), 1e-5, "target epsilon"), (8.0, 0.0, "delta"), (8.0, 1.0, "delta")],
)
def test_a_search_refuses_the_budgets_a_run_refuses(target, delta, match):
    """plan_search and plan_privacy share one check, so a budget fails the same way in both."""
    from eqdp_ray.privacy import plan_privacy

    with pytest.raises(PrivacyBudgetError, match=match) as searched:
        plan_search(target, delta, SHAPES, max_trials=4)
    with pytest.raises(PrivacyBudgetError, match=match) as ran:
        plan_privacy(target, delta, 0.05, 100, "rdp")
    assert str(searched.value) == str(ran.value)


def test_papernot_steinke_plan_is_the_theorem_by_hand():
    plan = plan_search(8.0, 1e-5, SHAPES, method=PAPERNOT_STEINKE, mean_trials=10, score_noise=20.0)
    assert plan.epsilon <= 8.0 and plan.epsilon >= 0.99 * 8.0
    worst = np.max(np.stack([plan.mechanism_for(s).rdp() for s in SHAPES]), axis=0)
    gamma, eta = plan.distribution["gamma"], plan.distribution["eta"]
    mean = eta * (1 - gamma) / (gamma * (1 - gamma**eta))
    assert mean == pytest.approx(10, rel=1e-6)
    # Theorem 2 written out: eps' = eps + (1+eta)(1-1/l^)eps^ + (1+eta)log(1/gamma)/l^ + log E[K]/(l-1)
    hat = min(
        [(1 + eta) * np.log(1 / gamma)]
        + [(1 + eta) * (1 - 1 / lh) * eh + (1 + eta) * np.log(1 / gamma) / lh for lh, eh in zip(ORDERS, worst)]
    )
    by_hand = [e + hat + np.log(mean) / (lam - 1) for lam, e in zip(ORDERS, worst)]
    assert plan.epsilon == pytest.approx(rdp_to_epsilon(np.array(by_hand), 1e-5)[0], rel=1e-9)
    # dp_accounting's own Papernot-Steinke (it adds monotonicity in the order): close, ours not lower
    acc = RdpAccountant(orders=ORDERS)
    acc.compose(RepeatAndSelectDpEvent(trial_event(plan.mechanism_for(SHAPES[0])), 10, 1.0))
    one_shape = rdp_to_epsilon(_tnb_by_hand(plan.mechanism_for(SHAPES[0]).rdp(), eta, gamma, mean), 1e-5)[0]
    assert one_shape == pytest.approx(acc.get_epsilon(1e-5), rel=0.01)
    # and random search buys a much larger per-trial epsilon than composition over as many trials
    composed = plan_search(8.0, 1e-5, SHAPES, max_trials=10, score_noise=20.0)
    assert plan.trial_epsilon > 1.5 * composed.trial_epsilon


def _tnb_by_hand(curve, eta, gamma, mean):
    hat = min(
        [(1 + eta) * np.log(1 / gamma)]
        + [(1 + eta) * (1 - 1 / lh) * eh + (1 + eta) * np.log(1 / gamma) / lh for lh, eh in zip(ORDERS, curve)]
    )
    return np.array([e + hat + np.log(mean) / (lam - 1) for lam, e in zip(ORDERS, curve)])


def test_ledger_refuses_what_would_exceed_and_counts_killed_attempts():
    plan = plan_search(8.0, 1e-5, SHAPES, max_trials=3, score_noise=20.0)
    ledger = SearchLedger(plan)
    worst = plan.mechanism_for(SHAPES[0])
    a = ledger.reserve("a", worst)
    b = ledger.reserve("b", worst)
    assert a is not None and b is not None
    # "a" stopped early by the scheduler: it settles at what it ran
    ran = TrialMechanism(worst.noise_multiplier, worst.sample_rate, worst.steps // 3, worst.score_noise, 1)
    ledger.settle("a", a.attempt, ran)
    # "b" was killed with the driver: never settled, it keeps counting at its reservation
    c = ledger.reserve("c", worst)
    assert c is not None
    assert ledger.reserve("b", worst) is None  # a restart of b from scratch no longer fits
    small = TrialMechanism(worst.noise_multiplier, worst.sample_rate, worst.steps // 3, worst.score_noise, 1)
    again = ledger.reserve("b", small)  # what is left of a's share fits a shorter restart
    assert again is not None and again.attempt == 2
    assert ledger.epsilon_spent() <= ledger.guarantee() <= 8.0
    expected = dp_accounting_epsilon([ran, worst, worst, small], 1e-5)
    assert ledger.epsilon_spent() == pytest.approx(expected, rel=1e-6)
    assert ledger.trial_epsilon("b") == pytest.approx(dp_accounting_epsilon([worst, small], 1e-5), rel=1e-6)
    with pytest.raises(PrivacyBudgetError):  # settling more than was reserved is a bug, never accepted
        ledger.settle("c", c.attempt, TrialMechanism(worst.noise_multiplier, worst.sample_rate, worst.steps + 1))


def test_plan_round_trips_through_json():
    import json

    plan = plan_search(8.0, 1e-5, SHAPES, max_trials=8, score_noise=20.0)
    from eqdp_ray.privacy.search import SearchPlan

    again = SearchPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    m = plan.mechanism_for(SHAPES[1])
    assert TrialMechanism.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_score_releases_counts_every_pass_and_the_last_step():
    from eqdp_ray.privacy.search import score_releases

    assert [score_releases(t, 10) for t in (0, 5, 10, 11, 20, 25)] == [0, 1, 1, 2, 2, 3]
