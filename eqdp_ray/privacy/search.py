"""One (epsilon, delta) for a whole search: calibrate every trial before it starts, account what it ran.

A search touches private data through two kinds of Gaussian mechanism (`eqdp_ray.privacy.rdp`):
each trial's DP-SGD steps and each noisy validation score that leaves the trial. A trial is
therefore described, as data, by a `TrialMechanism`; a study is the adaptive composition of
its trials' mechanisms.

Two ways to bound a study, each with its theorem:

- composition (any search, adaptive ones included: TPE, ASHA): RDP adds order by order under
  adaptive composition (Mironov 2017, Proposition 1). The mechanisms' parameters are chosen
  adaptively too (which trial runs, for how many steps), so the bound is a Renyi filter
  (Feldman & Zrnic, NeurIPS 2021, Theorem 3.1 at each order): a budget curve B fixed before the
  study starts, and a trial may start only if the curves already committed plus its own worst
  case stay <= B at every order. Then the study is (a, B(a))-RDP for every a, whatever the
  adaptive choices, hence (conv(B), delta)-DP. `SearchPlan.budget_rdp` is B; `SearchLedger`
  enforces it.
- Papernot-Steinke (random search with a secret random number of trials, nothing adaptive):
  `eqdp_ray.privacy.selection`; the budget is then the theorem's bound on the best-of-K.

Calibration (`plan_search`) runs before the first trial. A trial's shape (sample rate, planned
steps, number of score releases) is known before it starts; its sigma is looked up in the plan.
Every shape gets the same per-trial epsilon e, the largest for which the bound of the whole
search (max_trials trials of the worst shape, or Papernot-Steinke over the worst shape) stays
<= the target. A trial stopped early or crashed has run fewer steps and released fewer scores
than planned; its curve is then below its share, and the ledger records what it ran.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eqdp_ray.privacy.accounting import check_epsilon_delta
from eqdp_ray.privacy.errors import PrivacyBudgetError
from eqdp_ray.privacy.rdp import ORDERS, gaussian_rdp, rdp_to_epsilon, subsampled_gaussian_rdp
from eqdp_ray.privacy.selection import (
    PoissonCount,
    TruncatedNegativeBinomial,
    count_distribution,
    selection_rdp,
    theorem_of,
)

COMPOSITION = "composition"
PAPERNOT_STEINKE = "papernot_steinke"
METHODS = (COMPOSITION, PAPERNOT_STEINKE)
THEOREM_COMPOSITION = (
    "adaptive RDP composition (Mironov 2017, Prop. 1) under a Renyi filter fixed in advance "
    "(Feldman & Zrnic 2021, Thm. 3.1), converted by Canonne, Kamath & Steinke 2020 (Prop. 12)"
)

#: Largest noise multiplier a calibration may return; beyond it a trial learns nothing.
MAX_SIGMA = 1e4


@dataclass(frozen=True)
class TrialShape:
    """What a trial will run, known before it starts and before its sigma is chosen."""

    sample_rate: float
    steps: int
    score_releases: int = 0

    def key(self) -> str:
        return f"{self.sample_rate!r}/{self.steps}/{self.score_releases}"


@dataclass(frozen=True)
class TrialMechanism:
    """Everything a trial does to private data: `steps` DP-SGD steps and `score_releases` noisy scores."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    score_noise: float | None = None  # std of the noise on each released count; None: no score released
    score_releases: int = 0

    def __post_init__(self) -> None:
        if self.score_releases and not (self.score_noise and self.score_noise > 0):
            raise PrivacyBudgetError("a released validation score needs a positive score noise")

    def rdp(self, orders: Sequence[int] = ORDERS) -> np.ndarray:
        curve = subsampled_gaussian_rdp(self.noise_multiplier, self.sample_rate, self.steps, orders)
        if self.score_releases:
            curve = curve + gaussian_rdp(float(self.score_noise), self.score_releases, orders)
        return curve

    def to_dict(self) -> dict[str, Any]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "score_noise": self.score_noise,
            "score_releases": self.score_releases,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialMechanism:
        noise = d.get("score_noise")
        return cls(
            float(d["noise_multiplier"]),
            float(d["sample_rate"]),
            int(d["steps"]),
            None if noise is None or (isinstance(noise, float) and math.isnan(noise)) else float(noise),
            int(d.get("score_releases") or 0),
        )


def score_releases(steps: int, eval_every: int) -> int:
    """How many validation scores a trial of `steps` steps releases: one every `eval_every` steps and one at the end."""
    if steps <= 0:
        return 0
    return steps // eval_every + (1 if steps % eval_every else 0)


def compose(mechanisms: Iterable[TrialMechanism], orders: Sequence[int] = ORDERS) -> np.ndarray:
    """The RDP curve of running all `mechanisms` (adaptively or not): their sum, order by order."""
    total = np.zeros(len(orders))
    for m in mechanisms:
        total = total + m.rdp(orders)
    return total


def composition_epsilon(mechanisms: Iterable[TrialMechanism], delta: float) -> float:
    """Epsilon at `delta` of the composition of `mechanisms`."""
    return rdp_to_epsilon(compose(mechanisms), delta)[0]


# ------------------------------------------------------------------------------------------
# Calibration before the first trial
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchPlan:
    """The noise of every trial shape and the budget curve the study may never exceed."""

    target_epsilon: float
    delta: float
    method: str
    max_trials: int | None  # composition: the most trials the study may run
    distribution: dict[str, float] | None  # Papernot-Steinke: the law of the number of trials
    score_noise: float | None
    trial_epsilon: float  # every shape alone is (trial_epsilon, delta)-DP
    sigmas: dict[str, float]  # TrialShape.key() -> noise multiplier
    budget_rdp: tuple[float, ...]  # composition: the filter B; Papernot-Steinke: the bound's curve
    epsilon: float  # conv(budget_rdp) at delta: the guarantee of the whole study, <= target
    theorem: str
    orders: tuple[int, ...] = ORDERS

    def sigma_for(self, shape: TrialShape) -> float:
        try:
            return self.sigmas[shape.key()]
        except KeyError:
            raise PrivacyBudgetError(
                f"trial shape q={shape.sample_rate:.5g}, {shape.steps} steps, {shape.score_releases} score "
                "releases was not planned for this search; this is a bug in eqdp-ray, please report it"
            ) from None

    def mechanism_for(self, shape: TrialShape) -> TrialMechanism:
        """The worst case of a trial of this shape: what the ledger reserves before it starts."""
        return TrialMechanism(
            self.sigma_for(shape), shape.sample_rate, shape.steps, self.score_noise, shape.score_releases
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "method": self.method,
            "max_trials": self.max_trials,
            "distribution": self.distribution,
            "score_noise": self.score_noise,
            "trial_epsilon": self.trial_epsilon,
            "sigmas": dict(self.sigmas),
            "budget_rdp": list(self.budget_rdp),
            "epsilon": self.epsilon,
            "theorem": self.theorem,
            "orders": list(self.orders),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SearchPlan:
        return cls(
            float(d["target_epsilon"]),
            float(d["delta"]),
            str(d["method"]),
            None if d.get("max_trials") is None else int(d["max_trials"]),
            None if d.get("distribution") is None else {k: float(v) for k, v in d["distribution"].items()},
            None if d.get("score_noise") is None else float(d["score_noise"]),
            float(d["trial_epsilon"]),
            {str(k): float(v) for k, v in d["sigmas"].items()},
            tuple(float(x) for x in d["budget_rdp"]),
            float(d["epsilon"]),
            str(d["theorem"]),
            tuple(int(o) for o in d.get("orders", ORDERS)),
        )


def _sigma_for_epsilon(shape: TrialShape, score_noise: float | None, epsilon: float, delta: float) -> float | None:
    """The smallest sigma (to 0.1%) at which one trial of `shape`, scores included, is (epsilon, delta)-DP."""
    scores = gaussian_rdp(score_noise, shape.score_releases) if shape.score_releases else np.zeros(len(ORDERS))

    def eps(sigma: float) -> float:
        return rdp_to_epsilon(subsampled_gaussian_rdp(sigma, shape.sample_rate, shape.steps) + scores, delta)[0]

    if eps(MAX_SIGMA) > epsilon:
        return None
    lo, hi = 0.05, 1.0
    while eps(hi) > epsilon:
        lo, hi = hi, hi * 2
    if eps(lo) <= epsilon:
        return lo
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if eps(mid) > epsilon else (lo, mid)
    return hi


def _search_curve(curves: list[np.ndarray], method: str, max_trials: int | None, dist: Any) -> np.ndarray:
    worst = np.max(np.stack(curves), axis=0)  # one curve that bounds every shape the space allows
    if method == COMPOSITION:
        return max_trials * worst
    return selection_rdp(worst, dist)


def plan_search(
    target_epsilon: float,
    delta: float,
    shapes: Iterable[TrialShape],
    *,
    method: str = COMPOSITION,
    max_trials: int | None = None,
    distribution: str = "truncated_negative_binomial",
    mean_trials: float | None = None,
    eta: float = 1.0,
    score_noise: float | None = None,
) -> SearchPlan:
    """Calibrate every trial shape so that the whole search is (<= target_epsilon, delta)-DP.

    `score_noise`: std of the Gaussian noise on each released count of correct validation
    predictions (sensitivity 1); needed as soon as a shape releases scores.
    """
    shapes = sorted(set(shapes), key=lambda s: (s.sample_rate, s.steps, s.score_releases))
    if not shapes:
        raise PrivacyBudgetError("a search needs at least one trial shape to calibrate")
    if method not in METHODS:
        raise PrivacyBudgetError(f"unknown search accounting method {method!r}: use one of {', '.join(METHODS)}")
    check_epsilon_delta(target_epsilon, delta)
    dist: TruncatedNegativeBinomial | PoissonCount | None = None
    dist_params: dict[str, float] | None = None
    if method == COMPOSITION:
        if max_trials is None or max_trials < 1:
            raise PrivacyBudgetError(f"composition needs the most trials the study may run (>= 1), got {max_trials}")
        theorem = THEOREM_COMPOSITION
    else:
        if mean_trials is None:
            raise PrivacyBudgetError("Papernot-Steinke needs the mean number of trials")
        try:
            dist = count_distribution(distribution, mean_trials, eta)
        except ValueError as exc:
            raise PrivacyBudgetError(str(exc)) from None
        dist_params = (
            {"eta": dist.eta, "gamma": dist.gamma, "mean": dist.mean}
            if isinstance(dist, TruncatedNegativeBinomial)
            else {"mu": dist.mu, "mean": dist.mean}
        )
        theorem = theorem_of(dist)
    if any(s.score_releases for s in shapes) and not (score_noise and score_noise > 0):
        raise PrivacyBudgetError("trials that release validation scores need a positive score noise")

    def evaluate(e: float) -> tuple[float, dict[str, float], np.ndarray] | None:
        sigmas, curves = {}, []
        for s in shapes:
            sigma = _sigma_for_epsilon(s, score_noise, e, delta)
            if sigma is None:
                return None
            sigmas[s.key()] = sigma
            curves.append(TrialMechanism(sigma, s.sample_rate, s.steps, score_noise, s.score_releases).rdp())
        total = _search_curve(curves, method, max_trials, dist)
        return rdp_to_epsilon(total, delta)[0], sigmas, total

    lo, hi = 0.0, target_epsilon  # a trial alone can never be allowed more than the whole search
    best = evaluate(hi)
    if best is None or best[0] > target_epsilon:
        best = None
        for _ in range(40):  # bisection on the per-trial epsilon: the search's bound grows with it
            mid = (lo + hi) / 2
            got = evaluate(mid)
            if got is not None and got[0] <= target_epsilon:
                lo, best = mid, got
            else:
                hi = mid
            if best is not None and hi - lo < 1e-3 * hi:
                break
        if best is None:
            what = (
                f"{max_trials} trials"
                if method == COMPOSITION
                else f"a random search of {mean_trials:g} trials on average"
            )
            raise PrivacyBudgetError(
                f"no noise lets {what} fit epsilon={target_epsilon} at delta={delta}: the validation scores alone "
                f"(noise {score_noise} on each count) spend it; raise the score noise, release fewer scores "
                "(a larger eval_every), run fewer trials, or raise epsilon"
            )
    else:
        lo = hi
    epsilon, sigmas, total = best
    return SearchPlan(
        target_epsilon=float(target_epsilon),
        delta=float(delta),
        method=method,
        max_trials=max_trials if method == COMPOSITION else None,
        distribution=dist_params,
        score_noise=score_noise,
        trial_epsilon=float(lo),
        sigmas=sigmas,
        budget_rdp=tuple(float(x) for x in total),
        epsilon=float(epsilon),
        theorem=theorem,
    )


# ------------------------------------------------------------------------------------------
# The ledger: what a study has committed and spent
# ------------------------------------------------------------------------------------------


@dataclass
class LedgerEntry:
    """One attempt of one trial: reserved at its worst case before it starts, settled to what it ran."""

    trial_id: str
    attempt: int
    reserved: TrialMechanism
    spent: TrialMechanism | None = None  # None while running, or if it was killed: counted at `reserved`

    @property
    def counted(self) -> TrialMechanism:
        return self.spent if self.spent is not None else self.reserved


@dataclass
class SearchLedger:
    """The Renyi filter of a study: refuses any attempt that could take the study past its budget.

    Composition: an attempt may start only if every attempt so far (settled ones at what they ran,
    unsettled ones at their reservation) plus its own worst case stays <= the budget curve at every
    order. A killed driver leaves unsettled entries: they keep counting at their reservation.
    """

    plan: SearchPlan
    entries: list[LedgerEntry] = field(default_factory=list)

    @classmethod
    def from_events(cls, plan: SearchPlan, events: Iterable[Mapping[str, Any]]) -> SearchLedger:
        """Rebuild a ledger from its recorded events (`reserve` / `settle` rows, in write order)."""
        ledger = cls(plan)
        by_key: dict[tuple[str, int], LedgerEntry] = {}
        for ev in events:
            if ev["event"] not in ("reserve", "settle"):
                continue
            key = (str(ev["trial_id"]), int(ev["attempt"]))
            mechanism = TrialMechanism.from_dict(ev)
            if ev["event"] == "reserve":
                by_key[key] = LedgerEntry(key[0], key[1], mechanism)
                ledger.entries.append(by_key[key])
            elif key in by_key:
                by_key[key].spent = mechanism
            else:  # a settle without its reservation: count it anyway, at what it says it ran
                by_key[key] = LedgerEntry(key[0], key[1], mechanism, mechanism)
                ledger.entries.append(by_key[key])
        return ledger

    def committed_rdp(self) -> np.ndarray:
        return compose((e.counted for e in self.entries), self.plan.orders)

    def can_start(self, mechanism: TrialMechanism) -> bool:
        if self.plan.method == PAPERNOT_STEINKE:
            planned = np.asarray(self.plan.budget_rdp)
            return bool(np.all(np.isfinite(planned)))  # the bound covers every planned draw
        budget = np.asarray(self.plan.budget_rdp)
        after = self.committed_rdp() + mechanism.rdp(self.plan.orders)
        return bool(np.all(after <= budget * (1 + 1e-9) + 1e-12))

    def reserve(self, trial_id: str, mechanism: TrialMechanism) -> LedgerEntry | None:
        """Record a new attempt at its worst case, or None if the budget has no room for it."""
        if not self.can_start(mechanism):
            return None
        attempt = 1 + max((e.attempt for e in self.entries if e.trial_id == trial_id), default=0)
        entry = LedgerEntry(trial_id, attempt, mechanism)
        self.entries.append(entry)
        return entry

    def settle(self, trial_id: str, attempt: int, spent: TrialMechanism) -> None:
        """Replace an attempt's reservation by what it ran (never more than reserved)."""
        for e in self.entries:
            if e.trial_id == trial_id and e.attempt == attempt:
                r = e.reserved
                if (
                    spent.steps > r.steps
                    or spent.score_releases > r.score_releases
                    or spent.noise_multiplier < r.noise_multiplier
                    or spent.sample_rate > r.sample_rate
                ):
                    raise PrivacyBudgetError(
                        f"trial {trial_id} ran more than it reserved ({spent} > {r}); this is a bug in eqdp-ray"
                    )
                e.spent = spent
                return
        raise PrivacyBudgetError(f"trial {trial_id} attempt {attempt} has no reservation in the ledger")

    def epsilon_spent(self) -> float:
        """Epsilon at the plan's delta of the composition of every attempt as counted."""
        return rdp_to_epsilon(self.committed_rdp(), self.plan.delta, self.plan.orders)[0]

    def guarantee(self) -> float:
        """The study's (epsilon, delta) guarantee: the filter's budget (composition) or the theorem's bound."""
        return self.plan.epsilon

    def trial_epsilon(self, trial_id: str) -> float:
        """A trial's share: epsilon at the plan's delta of its attempts alone."""
        mine = [e.counted for e in self.entries if e.trial_id == trial_id]
        return rdp_to_epsilon(compose(mine, self.plan.orders), self.plan.delta, self.plan.orders)[0] if mine else 0.0
