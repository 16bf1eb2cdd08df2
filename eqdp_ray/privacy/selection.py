"""Papernot & Steinke (ICLR 2022, arXiv 2110.03620): the best of a random number of trials.

Random search whose number of trials K is itself random (and secret) releases its best trial
at little more than one trial's cost. The conditions under which the numbers hold:

1. K is drawn from a truncated negative binomial D_{eta,gamma} (Theorem 2) or a Poisson
   distribution (Theorem 6), with randomness the adversary does not see;
2. each trial draws its hyperparameters independently from one fixed distribution (no TPE, no
   early stopping, nothing that looks at earlier trials);
3. one RDP curve bounds every trial, whatever it drew (`eqdp_ray.privacy.search` builds it as the
   pointwise maximum over the trial shapes a space allows; Renyi divergence is jointly
   quasi-convex, so a random mixture of mechanisms is bounded by its worst component);
4. only the best trial is released (its score, hyperparameters and model).

Curves are arrays over `eqdp_ray.privacy.rdp.ORDERS` (integer orders).
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from eqdp_ray.privacy.epsilon_format import format_epsilon
from eqdp_ray.privacy.rdp import ORDERS, rdp_to_delta, rdp_to_epsilon, subsampled_gaussian_rdp

THEOREM_TNB = "Papernot & Steinke (ICLR 2022), Theorem 2 (truncated negative binomial number of trials)"
THEOREM_POISSON = "Papernot & Steinke (ICLR 2022), Theorem 6 (Poisson number of trials)"


# ------------------------------------------------------------------------------------------
# The distributions of the number of trials
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TruncatedNegativeBinomial:
    """D_{eta,gamma} of Papernot & Steinke, Definition 1: K >= 1 with

        P[K=k] = (1-gamma)^k / (gamma^-eta - 1) * prod_{l=0}^{k-1} (l+eta)/(l+1)   (eta != 0)
        P[K=k] = (1-gamma)^k / (k * log(1/gamma))                                  (eta == 0)

    eta = 1 is the geometric distribution, eta = 0 the logarithmic one.
    """

    eta: float
    gamma: float

    def __post_init__(self) -> None:
        if not self.eta > -1:
            raise ValueError(f"eta must be > -1, got {self.eta}")
        if not 0 < self.gamma < 1:
            raise ValueError(f"gamma must lie in (0, 1), got {self.gamma}")

    @property
    def mean(self) -> float:
        """E[K], as stated with Theorem 2."""
        eta, gamma = self.eta, self.gamma
        if eta == 0:
            return (1 / gamma - 1) / math.log(1 / gamma)
        return eta * (1 - gamma) / (gamma * (1 - gamma**eta))

    @classmethod
    def with_mean(cls, mean: float, eta: float = 1.0) -> TruncatedNegativeBinomial:
        """The gamma whose E[K] is `mean` (E[K] falls from infinity to 1 as gamma goes from 0 to 1)."""
        if not mean > 1:
            raise ValueError(f"the mean number of trials must be > 1, got {mean}")
        lo, hi = 1e-300, 1 - 1e-15
        for _ in range(200):  # bisection on log gamma: E[K] spans many decades
            mid = math.exp((math.log(lo) + math.log(hi)) / 2)
            if cls(eta, mid).mean > mean:
                lo = mid
            else:
                hi = mid
        return cls(eta, math.exp((math.log(lo) + math.log(hi)) / 2))

    def pmf(self, k: int) -> float:
        if k < 1:
            return 0.0
        p = self._first()
        for i in range(1, k):
            p *= self._ratio(i)
        return p

    def _first(self) -> float:
        eta, gamma = self.eta, self.gamma
        if eta == 0:
            return (1 - gamma) / math.log(1 / gamma)
        return (1 - gamma) * eta / (gamma ** (-eta) - 1)

    def _ratio(self, k: int) -> float:
        """P[K=k+1] / P[K=k]."""
        return (1 - self.gamma) * (k + self.eta) / (k + 1)

    def sample(self, rng: random.Random | None = None) -> int:
        """Inverse-CDF draw; `rng` defaults to the OS's CSPRNG (the draw must stay secret)."""
        u = (rng or secrets.SystemRandom()).random()
        k, p = 1, self._first()
        cdf = p
        while cdf < u and p > 0:
            p *= self._ratio(k)
            k += 1
            cdf += p
        return k


@dataclass(frozen=True)
class PoissonCount:
    """K ~ Poisson(mu); K = 0 means the search outputs nothing (Theorem 6 counts that case)."""

    mu: float

    def __post_init__(self) -> None:
        if not 0 < self.mu <= 500:
            raise ValueError(f"mu must lie in (0, 500], got {self.mu}")

    @property
    def mean(self) -> float:
        return self.mu

    def pmf(self, k: int) -> float:
        return 0.0 if k < 0 else math.exp(-self.mu + k * math.log(self.mu) - math.lgamma(k + 1))

    def sample(self, rng: random.Random | None = None) -> int:
        u = (rng or secrets.SystemRandom()).random()
        k, p = 0, math.exp(-self.mu)
        cdf = p
        while cdf < u and (p > 0 or k < self.mu):
            k += 1
            p *= self.mu / k
            cdf += p
        return k


def count_distribution(distribution: str, mean: float, eta: float = 1.0) -> TruncatedNegativeBinomial | PoissonCount:
    if distribution == "poisson":
        return PoissonCount(mean)
    if distribution == "truncated_negative_binomial":
        return TruncatedNegativeBinomial.with_mean(mean, eta)
    raise ValueError(f"unknown distribution {distribution!r}")


def tnb_rdp(rdp: np.ndarray, dist: TruncatedNegativeBinomial, orders: Sequence[int] = ORDERS) -> np.ndarray:
    """Theorem 2 (Papernot & Steinke 2022): RDP of the best of K ~ D_{eta,gamma} independent trials.

    If each trial is (lambda, eps)-RDP and (lambda_hat, eps_hat)-RDP, the search is
    (lambda, eps')-RDP with

        eps' = eps + (1+eta)(1 - 1/lambda_hat) eps_hat + (1+eta) log(1/gamma) / lambda_hat
                   + log(E[K]) / (lambda - 1).

    lambda_hat is free (>= 1); the middle terms do not depend on lambda, so the best lambda_hat
    over the order grid (and lambda_hat = 1, where the eps_hat term vanishes) is used for all.
    """
    a = np.asarray(orders, dtype=float)
    rdp = np.asarray(rdp, dtype=float)
    eta, gamma = dist.eta, dist.gamma
    log_inv_gamma = math.log(1 / gamma)
    hat = (1 + eta) * (1 - 1 / a) * rdp + (1 + eta) * log_inv_gamma / a
    best_hat = min(float(np.min(hat)), (1 + eta) * log_inv_gamma)  # lambda_hat = 1
    return rdp + best_hat + math.log(dist.mean) / (a - 1)


def poisson_rdp(rdp: np.ndarray, dist: PoissonCount, orders: Sequence[int] = ORDERS) -> np.ndarray:
    """Theorem 6 (Papernot & Steinke 2022): RDP of the best of K ~ Poisson(mu) independent trials.

    If each trial is (lambda, eps)-RDP and (eps_hat, delta_hat)-DP with
    e^eps_hat <= 1 + 1/(lambda - 1), the search is (lambda, eps')-RDP with

        eps' = eps + mu * delta_hat + log(mu) / (lambda - 1).

    For each lambda we take the largest allowed eps_hat and the delta_hat the trial's own RDP
    curve gives for it.
    """
    a = np.asarray(orders, dtype=float)
    rdp = np.asarray(rdp, dtype=float)
    out = np.empty_like(rdp)
    for i, lam in enumerate(a):
        eps_hat = math.log1p(1 / (lam - 1))
        delta_hat = rdp_to_delta(rdp, eps_hat, orders)
        out[i] = rdp[i] + dist.mu * delta_hat + math.log(dist.mu) / (lam - 1)
    return out


def selection_rdp(
    rdp: np.ndarray, dist: TruncatedNegativeBinomial | PoissonCount, orders: Sequence[int] = ORDERS
) -> np.ndarray:
    """RDP of releasing the best of K ~ `dist` trials, each bounded by the curve `rdp`."""
    if isinstance(dist, TruncatedNegativeBinomial):
        return tnb_rdp(rdp, dist, orders)
    return poisson_rdp(rdp, dist, orders)


def theorem_of(dist: TruncatedNegativeBinomial | PoissonCount) -> str:
    return THEOREM_TNB if isinstance(dist, TruncatedNegativeBinomial) else THEOREM_POISSON


def uniform_rdp(candidates: Iterable[tuple[float, float, int]], orders: Sequence[int] = ORDERS) -> np.ndarray:
    """One curve that bounds every candidate (sigma, q, steps) trial: their pointwise maximum (condition 3)."""
    curves = [subsampled_gaussian_rdp(s, q, t, orders) for s, q, t in candidates]
    if not curves:
        raise ValueError("no candidate trials")
    return np.max(np.stack(curves), axis=0)


@dataclass(frozen=True)
class SearchPrivacy:
    """What a whole random search guarantees, and what it rests on."""

    epsilon: float
    delta: float
    order: float
    trial_epsilon: float  # the uniform per-trial curve converted at the same delta
    expected_trials: float
    distribution: str
    theorem: str
    parameters: dict[str, float]
    candidates: int  # how many (sample rate, steps) settings the uniform curve covers

    def describe(self) -> str:
        return (
            f"search privacy: ({format_epsilon(self.epsilon)}, {self.delta:.3g})-DP for releasing the best trial of a random "
            f"search with E[K]={self.expected_trials:.3g} trials [{self.theorem}]; each trial alone: "
            f"epsilon <= {format_epsilon(self.trial_epsilon)} by its RDP curve. Covers only the best trial's output, not the "
            "other trials' numbers nor the number of trials."
        )


def search_privacy(
    distribution: str,
    mean: float,
    candidates: Iterable[tuple[float, float, int]],
    delta: float,
    *,
    eta: float = 1.0,
    orders: Sequence[int] = ORDERS,
) -> SearchPrivacy:
    """(epsilon, delta) of a Papernot-Steinke random search whose trials are any of the (sigma, q, steps) `candidates`."""
    candidates = list(candidates)
    curve = uniform_rdp(candidates, orders)
    dist = count_distribution(distribution, mean, eta)
    total = selection_rdp(curve, dist, orders)
    params = {"eta": dist.eta, "gamma": dist.gamma} if isinstance(dist, TruncatedNegativeBinomial) else {"mu": dist.mu}
    epsilon, order = rdp_to_epsilon(total, delta, orders)
    trial_epsilon, _ = rdp_to_epsilon(curve, delta, orders)
    return SearchPrivacy(
        epsilon, delta, order, trial_epsilon, dist.mean, distribution, theorem_of(dist), params, len(candidates)
    )
