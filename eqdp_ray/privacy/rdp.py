"""Renyi-DP curves of the mechanisms eqdp-ray runs, and their conversion to (epsilon, delta).

Two mechanisms touch private data in a search, and both are Gaussian:

- a DP-SGD step: Poisson sampling at rate q, clipped sum (add/remove sensitivity C), noise
  N(0, sigma^2 C^2). Its RDP at integer order a is (Mironov, Talwar & Zhang 2019, "Renyi
  Differential Privacy of the Sampled Gaussian Mechanism", Section 3.3)

      rdp(a) = 1/(a-1) * log sum_{k=0}^{a} C(a,k) (1-q)^(a-k) q^k exp((k^2 - k) / (2 sigma^2));

- a released validation score: the count of correct predictions (add/remove sensitivity 1)
  plus N(0, s^2). That is the same formula at q = 1: rdp(a) = a / (2 s^2) (Mironov 2017,
  Proposition 7).

RDP composes adaptively by adding curves order by order (Mironov 2017, Proposition 1). A curve
converts to (epsilon, delta) by Canonne, Kamath & Steinke 2020 (Proposition 12) / Balle et al.
2020 (Theorem 21), the conversion Opacus and Google's dp_accounting use:

      epsilon = min_a  rdp(a) + log((a-1)/a) - (log delta + log a) / (a-1).

Only integer orders are used: the closed form above is exact there and vectorises, so a whole
search can be calibrated in about a second. A bound that holds at a subset of orders is still a
bound; fractional orders would tighten epsilon by well under 1% at the budgets we ship.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import gammaln

#: The Renyi orders every search-level curve is kept on (a study stores its curves on these).
ORDERS: tuple[int, ...] = tuple(list(range(2, 65)) + [72, 80, 96, 112, 128, 160, 192, 256, 384, 512, 768, 1024])

_ORDERS_ARRAY = np.asarray(ORDERS, dtype=float)


def _binomial_terms(orders: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every order a and k = 0..a, laid end to end: k, a, log C(a, k); and where each order starts."""
    k = np.concatenate([np.arange(a + 1, dtype=float) for a in orders])
    a = np.concatenate([np.full(a + 1, float(a)) for a in orders])
    log_binom = gammaln(a + 1) - gammaln(k + 1) - gammaln(a - k + 1)
    starts = np.cumsum([0] + [a + 1 for a in orders[:-1]])
    return k, a, log_binom, starts


_TERMS: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def _log_a(q: float, sigma: float, orders: tuple[int, ...]) -> np.ndarray:
    """log E[(mu_1/mu_0)^a] of the sampled Gaussian at each integer order a (Mironov et al. 2019)."""
    if orders not in _TERMS:
        _TERMS[orders] = _binomial_terms(orders)
    k, a, log_binom, starts = _TERMS[orders]
    terms = k * (k - 1) / (2 * sigma**2) + log_binom + k * math.log(q) + (a - k) * math.log1p(-q)
    peak = np.maximum.reduceat(terms, starts)
    seg = np.repeat(np.arange(len(orders)), [o + 1 for o in orders])
    return peak + np.log(np.add.reduceat(np.exp(terms - peak[seg]), starts))


def subsampled_gaussian_rdp(
    noise_multiplier: float, sample_rate: float, steps: int, orders: Sequence[int] = ORDERS
) -> np.ndarray:
    """RDP of `steps` Poisson-subsampled Gaussian steps (noise multiplier sigma, rate q) at each order."""
    if steps == 0 or sample_rate == 0:
        return np.zeros(len(orders))
    if not noise_multiplier > 0:
        return np.full(len(orders), np.inf)
    if sample_rate >= 1.0:
        return steps * np.asarray(orders, dtype=float) / (2 * noise_multiplier**2)
    orders = tuple(int(a) for a in orders)
    return steps * _log_a(sample_rate, noise_multiplier, orders) / (np.asarray(orders, dtype=float) - 1)


def gaussian_rdp(noise_multiplier: float, releases: int, orders: Sequence[int] = ORDERS) -> np.ndarray:
    """RDP of `releases` Gaussian releases of a sensitivity-1 statistic with noise std `noise_multiplier`."""
    if releases == 0:
        return np.zeros(len(orders))
    if not noise_multiplier > 0:
        return np.full(len(orders), np.inf)
    return releases * np.asarray(orders, dtype=float) / (2 * noise_multiplier**2)


def rdp_to_epsilon(rdp: np.ndarray, delta: float, orders: Sequence[int] = ORDERS) -> tuple[float, int]:
    """(epsilon, the order that gives it) at `delta`, by the conversion of the module docstring."""
    a = np.asarray(orders, dtype=float)
    rdp = np.asarray(rdp, dtype=float)
    with np.errstate(invalid="ignore"):
        eps = rdp + np.log1p(-1 / a) - (math.log(delta) + np.log(a)) / (a - 1)
    eps = np.where(np.isnan(eps), np.inf, eps)
    i = int(np.argmin(eps))
    return max(0.0, float(eps[i])), int(a[i])


def rdp_to_delta(rdp: np.ndarray, epsilon: float, orders: Sequence[int] = ORDERS) -> float:
    """The smallest delta at which the curve gives `epsilon`: the same conversion, solved for delta."""
    a = np.asarray(orders, dtype=float)
    rdp = np.asarray(rdp, dtype=float)
    log_delta = (a - 1) * (rdp - epsilon + np.log1p(-1 / a)) - np.log(a)
    return float(min(1.0, math.exp(min(0.0, float(np.min(log_delta))))))
