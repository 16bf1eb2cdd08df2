"""The Papernot-Steinke bound on a whole random search, checked against the paper's formulas."""

import math
import random
import warnings

import numpy as np
import pytest
from opacus.accountants.analysis.rdp import get_privacy_spent

from eqdp_ray.privacy import plan_privacy
from eqdp_ray.privacy.rdp import ORDERS, rdp_to_epsilon, subsampled_gaussian_rdp
from eqdp_ray.privacy.selection import (
    PoissonCount,
    TruncatedNegativeBinomial,
    poisson_rdp,
    search_privacy,
    tnb_rdp,
    uniform_rdp,
)


def trial_rdp(sigma, q, steps):
    return subsampled_gaussian_rdp(sigma, q, steps)


def rdp_to_dp(curve, orders, delta):
    return rdp_to_epsilon(curve, delta, orders)


@pytest.fixture(scope="module")
def dpsgd_trial():
    """A digits-sized DP-SGD trial calibrated to epsilon 8: (sigma, q, steps)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = plan_privacy(8.0, 1e-5, 128 / 1294, 150, "rdp")
    return plan.noise_multiplier, 128 / 1294, 150


@pytest.mark.parametrize("eta", [-0.5, 0.0, 0.5, 1.0, 3.0])
def test_truncated_negative_binomial_is_a_distribution_with_the_stated_mean(eta):
    dist = TruncatedNegativeBinomial.with_mean(6.0, eta)
    gamma = dist.gamma
    probs, running = [], 1.0  # Definition 1 of the paper, by a running product
    for k in range(1, 5000):
        running *= (k - 1 + eta) / k if eta != 0 else 1.0
        p = (1 - gamma) ** k / (k * math.log(1 / gamma)) if eta == 0 else (1 - gamma) ** k / (gamma**-eta - 1) * running
        probs.append(p)
    assert dist.mean == pytest.approx(6.0, rel=1e-9)
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert sum(k * p for k, p in enumerate(probs, start=1)) == pytest.approx(6.0, rel=1e-3)
    for k in (1, 2, 7, 30):
        assert dist.pmf(k) == pytest.approx(probs[k - 1], rel=1e-9)
    assert dist.pmf(0) == 0.0


def test_eta_one_is_geometric_and_sampling_matches_the_mean():
    dist = TruncatedNegativeBinomial(1.0, 0.25)
    assert dist.mean == pytest.approx(4.0)
    for k in (1, 2, 5):
        assert dist.pmf(k) == pytest.approx(0.25 * 0.75 ** (k - 1))
    rng = random.Random(1)
    draws = [dist.sample(rng) for _ in range(20000)]
    assert min(draws) == 1 and np.mean(draws) == pytest.approx(4.0, rel=0.05)
    assert isinstance(dist.sample(), int) and dist.sample() >= 1  # the OS CSPRNG by default
    poisson = PoissonCount(3.0)
    draws = [poisson.sample(rng) for _ in range(20000)]
    assert np.mean(draws) == pytest.approx(3.0, rel=0.05) and min(draws) == 0


def _theorem2_by_hand(curve, orders, eta, gamma, lam_index):
    """Papernot & Steinke Theorem 2, written out independently of the module."""
    if eta == 0:
        mean = (1 / gamma - 1) / math.log(1 / gamma)
    else:
        mean = eta * (1 - gamma) / (gamma * (1 - gamma**eta))
    best = (1 + eta) * math.log(1 / gamma)  # lambda_hat = 1
    for lam_hat, eps_hat in zip(orders, curve):
        best = min(best, (1 + eta) * (1 - 1 / lam_hat) * eps_hat + (1 + eta) * math.log(1 / gamma) / lam_hat)
    lam = orders[lam_index]
    return curve[lam_index] + best + math.log(mean) / (lam - 1)


@pytest.mark.parametrize("eta,gamma", [(1.0, 0.1), (0.0, 0.05), (0.5, 0.3), (-0.5, 0.01)])
def test_theorem_2_matches_the_paper_formula_on_a_gaussian_mechanism(eta, gamma):
    sigma = 3.0
    curve = np.array([lam / (2 * sigma**2) for lam in ORDERS])  # Gaussian mechanism, sensitivity 1
    got = tnb_rdp(curve, TruncatedNegativeBinomial(eta, gamma), ORDERS)
    for i in (0, 10, 50, len(ORDERS) - 1):
        assert got[i] == pytest.approx(_theorem2_by_hand(curve, ORDERS, eta, gamma, i), rel=1e-12)


@pytest.mark.parametrize("eta", [0.0, 1.0, 2.0])
def test_pure_dp_trials_give_corollary_3(eta):
    """A pure eps-DP trial (constant RDP curve): as the orders grow the bound tends to (2 + eta) eps."""
    eps0 = 0.7
    orders = list(np.geomspace(1.01, 1e8, 400))
    curve = np.full(len(orders), eps0)
    got = tnb_rdp(curve, TruncatedNegativeBinomial.with_mean(10.0, eta), orders)
    assert got[-1] == pytest.approx((2 + eta) * eps0, abs=1e-3)
    assert np.all(got >= eps0)


def _delta_for(curve, orders, eps_hat):
    """Smallest delta at which Opacus's conversion of `curve` gives eps_hat (bisection, independent code)."""
    lo, hi = -700.0, 0.0
    for _ in range(200):
        mid = (lo + hi) / 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eps, _ = get_privacy_spent(orders=orders, rdp=curve, delta=math.exp(mid))
        if eps > eps_hat:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


def test_theorem_6_matches_the_paper_formula(dpsgd_trial):
    sigma, q, steps = dpsgd_trial
    curve = trial_rdp(sigma, q, steps)
    mu = 8.0
    got = poisson_rdp(curve, PoissonCount(mu), ORDERS)
    for i in (2, 30, 60, len(ORDERS) - 1):
        lam = ORDERS[i]
        eps_hat = math.log(1 + 1 / (lam - 1))  # the largest eps_hat Theorem 6 allows at this lambda
        delta_hat = min(1.0, _delta_for(curve, ORDERS, eps_hat))
        expected = curve[i] + mu * delta_hat + math.log(mu) / (lam - 1)
        assert got[i] == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("distribution", ["truncated_negative_binomial", "poisson"])
def test_search_epsilon_grows_with_the_expected_number_of_trials(dpsgd_trial, distribution):
    epsilons = [search_privacy(distribution, mean, [dpsgd_trial], 1e-5).epsilon for mean in (1.5, 3, 10, 30, 100)]
    assert all(a < b for a, b in zip(epsilons, epsilons[1:]))


def test_search_epsilon_is_trial_epsilon_plus_a_modest_overhead(dpsgd_trial):
    trial_eps = rdp_to_dp(trial_rdp(*dpsgd_trial), ORDERS, 1e-5)[0]
    assert 8.0 <= trial_eps <= 8.0 * 1.02  # what plan_privacy calibrated to (fractional orders: a bit lower)
    almost_one = search_privacy("truncated_negative_binomial", 1.001, [dpsgd_trial], 1e-5)
    assert trial_eps < almost_one.epsilon < trial_eps + 0.1
    ten = search_privacy("truncated_negative_binomial", 10, [dpsgd_trial], 1e-5)
    assert trial_eps + 1 < ten.epsilon < 2 * trial_eps  # far below composition over 10 trials
    composed = rdp_to_dp(10 * trial_rdp(*dpsgd_trial), ORDERS, 1e-5)[0]
    assert ten.epsilon < composed / 2
    assert ten.trial_epsilon == pytest.approx(trial_eps) and "Theorem 2" in ten.theorem
    assert "Theorem 6" in search_privacy("poisson", 10, [dpsgd_trial], 1e-5).theorem


def test_uniform_curve_bounds_every_candidate(dpsgd_trial):
    sigma, q, steps = dpsgd_trial
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = plan_privacy(8.0, 1e-5, 2 * q, steps // 2, "rdp")
    second = (other.noise_multiplier, 2 * q, steps // 2)
    both = uniform_rdp([dpsgd_trial, second])
    assert np.all(both >= trial_rdp(*dpsgd_trial)) and np.all(both >= trial_rdp(*second))
    one = search_privacy("truncated_negative_binomial", 5, [dpsgd_trial], 1e-5).epsilon
    two = search_privacy("truncated_negative_binomial", 5, [dpsgd_trial, second], 1e-5)
    assert two.epsilon >= one and two.candidates == 2
