"""The one-run audit's bound against a direct evaluation of the theorem (exact binomial sums here)."""

import math
from fractions import Fraction

import numpy as np
import pytest

from eqdp_ray.privacy.audit_bound import audit_from_scores, epsilon_lower_bound, one_run_p_value


def theorem_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Steinke, Nasr & Jagielski (2023), main theorem, written out term by term:
    P[W >= v] + 2 m delta max_{i in 1..m} (P[W >= v - i] - P[W >= v]) / i, W ~ Bin(r, e^eps/(1+e^eps))."""
    q = Fraction(math.exp(eps)) / (1 + Fraction(math.exp(eps)))

    def tail(t: int) -> Fraction:  # P[W >= t], exactly
        return sum((math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(max(t, 0), r + 1)), Fraction(0))

    beta = tail(v)
    alpha = max((tail(v - i) - beta) / i for i in range(1, m + 1))
    return min(float(beta + 2 * m * Fraction(delta) * alpha), 1.0)


@pytest.mark.parametrize(
    "m, r, v, eps, delta",
    [
        (20, 10, 9, 0.5, 0.0),
        (20, 10, 9, 1.0, 1e-3),
        (60, 40, 33, 1.3, 1e-4),
        (50, 50, 50, 2.5, 1e-5),
        (30, 8, 2, 0.2, 0.01),
    ],
)
def test_p_value_is_the_theorem(m, r, v, eps, delta):
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(
        theorem_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-15
    )


@pytest.mark.parametrize(
    "m, r, v, delta", [(60, 40, 36, 0.0), (60, 40, 36, 1e-4), (100, 60, 58, 1e-5), (80, 80, 80, 1e-5)]
)
def test_lower_bound_is_where_the_theorem_stops_rejecting(m, r, v, delta):
    significance = 0.05
    eps = epsilon_lower_bound(m, r, v, significance=significance, delta=delta)
    assert eps > 0.5
    assert theorem_p_value(m, r, v, eps - 1e-3, delta) < significance  # still rejected just below
    assert theorem_p_value(m, r, v, eps + 1e-3, delta) >= significance  # no longer rejected just above


def test_no_evidence_gives_zero():
    assert epsilon_lower_bound(100, 0, 0) == 0.0
    assert epsilon_lower_bound(100, 40, 20) == 0.0  # chance level
    assert epsilon_lower_bound(100, 40, 24) == 0.0  # above chance, not significant


def test_perfect_guesses_are_capped_by_the_number_of_canaries():
    # r guesses all right at eps: p = (e^eps/(1+e^eps))^r (delta 0), so the bound is log(1/(s^(-1/r) - 1))
    for r in (50, 500):
        expected = -math.log(0.05 ** (-1 / r) - 1)
        assert epsilon_lower_bound(r, r, r) == pytest.approx(expected, abs=1e-4)


def test_scores_pick_top_and_bottom_guesses_with_bonferroni():
    rng = np.random.default_rng(0)
    included = rng.random(1000) < 0.5
    scores = np.where(included, 1.0, 0.0) + 1e-3 * rng.random(1000)  # perfectly separated
    audit = audit_from_scores(scores, included, guess_counts=[(10, 10), (250, 250)], delta=0.0)
    assert (audit.guesses_in, audit.guesses_out, audit.correct, audit.candidates) == (250, 250, 500, 2)
    assert audit.epsilon_lower_bound == pytest.approx(-math.log((0.05 / 2) ** (-1 / 500) - 1), abs=1e-4)
    # the same evidence with one candidate is tested at the full significance: a higher bound
    alone = audit_from_scores(scores, included, guess_counts=[(250, 250)], delta=0.0)
    assert alone.epsilon_lower_bound > audit.epsilon_lower_bound


def test_scores_independent_of_membership_rarely_give_a_bound():
    # The bound is a 95% statement: over 200 audits of a mechanism that leaks nothing,
    # at most a few percent may exceed zero (binomial 5% tail with margin).
    rng = np.random.default_rng(1)
    positive = 0
    for _ in range(200):
        included = rng.random(300) < 0.5
        positive += audit_from_scores(rng.normal(size=300), included, delta=1e-5).epsilon_lower_bound > 0
    assert positive <= 18


def test_bad_guess_counts_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        audit_from_scores([0.0, 1.0], [True, False], guess_counts=[(2, 1)])
    with pytest.raises(ValueError, match="one inclusion bit per score"):
        audit_from_scores([0.0, 1.0], [True])
