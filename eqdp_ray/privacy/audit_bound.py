"""The one-run audit's lower bound on epsilon (Steinke, Nasr & Jagielski, NeurIPS 2023).

m canaries are each included by an independent fair coin S_i in {-1, +1}. After the run the
auditor guesses T_i in {-1, 0, +1} (include / abstain / exclude); r = k+ + k- guesses, v of
them correct. If the run is (epsilon, delta)-DP, then (their main theorem, with delta > 0)

    P[v >= v_obs] <= P[W >= v_obs] + 2 m delta max_{i=1..v_obs} (P[W >= v_obs - i] - P[W >= v_obs]) / i,

with W ~ Binomial(r, e^eps / (1 + e^eps)): a DP run cannot guess better than r independent
eps-randomised responses, up to the delta term. The right side is a p-value for the claim
"the run is (eps, delta)-DP"; the lower bound is the largest eps whose p-value is below
1 - confidence. It only holds if the guesses (here: how many of the top and bottom scores to
guess) are fixed before the scores are seen; choosing among several candidates after seeing
them is paid for by a Bonferroni correction over the candidates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, special, stats


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """Probability that an (epsilon, delta)-DP run lets r guesses over m canaries get >= v right."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    q = special.expit(epsilon)  # accuracy of eps-randomised response
    beta = stats.binom.sf(v - 1, r, q)  # P[W >= v]
    if delta == 0 or v == 0:
        return float(min(beta, 1.0))
    i = np.arange(1, v + 1)
    alpha = np.max((stats.binom.sf(v - i - 1, r, q) - beta) / i)  # max_i P[v - i <= W < v] / i
    return float(min(beta + 2 * m * delta * alpha, 1.0))


def epsilon_lower_bound(m: int, r: int, v: int, *, significance: float = 0.05, delta: float = 0.0) -> float:
    """The largest epsilon that r guesses with v correct reject at `significance` (0 if none)."""
    if not 0 < significance < 1:
        raise ValueError(f"significance must lie in (0, 1), got {significance}")

    def excess(eps: float) -> float:  # > 0 while the claim "eps-DP" is rejected
        return significance - one_run_p_value(m, r, v, eps, delta)

    if r == 0 or excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0:
        high *= 2
        if high > 1e4:  # every guess right and astronomically many: no finite claim survives
            return math.inf
    return float(optimize.brentq(excess, high / 2 if high > 1 else 0.0, high, xtol=1e-6))


@dataclass(frozen=True)
class AuditBound:
    """One audit's outcome: the guesses that gave the best bound, and the bound."""

    epsilon_lower_bound: float
    canaries: int  # m
    guesses_in: int  # k+
    guesses_out: int  # k-
    correct: int  # v
    confidence: float
    delta: float
    candidates: int  # how many (k+, k-) were tried; significance is split among them

    def to_dict(self) -> dict:
        return asdict(self)


def default_guess_counts(m: int) -> list[tuple[int, int]]:
    """Candidate (k+, k-): top and bottom fractions of the scores, fixed before any score is seen."""
    fractions = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
    counts = sorted({max(1, round(f * m / 2)) for f in fractions})
    return [(k, k) for k in counts if 2 * k <= m] + [(k, 0) for k in counts if k <= m]


def audit_from_scores(
    scores: Sequence[float],
    included: Sequence[bool],
    *,
    confidence: float = 0.95,
    delta: float = 0.0,
    guess_counts: Sequence[tuple[int, int]] | None = None,
) -> AuditBound:
    """Guess "in" for the k+ highest scores and "out" for the k- lowest, for every candidate
    (k+, k-); return the best bound, each candidate tested at (1 - confidence) / candidates."""
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    m = len(scores)
    if m == 0 or len(included) != m:
        raise ValueError(f"need one inclusion bit per score, got {m} scores and {len(included)} bits")
    candidates = list(guess_counts or default_guess_counts(m))
    for k_in, k_out in candidates:
        if k_in < 0 or k_out < 0 or k_in + k_out > m:
            raise ValueError(f"guess counts ({k_in}, {k_out}) do not fit {m} canaries")
    return _best_guesses(scores, included, candidates, confidence, delta, tests=len(candidates))


def _best_guesses(
    scores: np.ndarray,
    included: np.ndarray,
    candidates: list[tuple[int, int]],
    confidence: float,
    delta: float,
    tests: int,
) -> AuditBound:
    m = len(scores)
    significance = (1 - confidence) / tests
    # Ties are broken by a fixed order that does not depend on membership (index order).
    order = np.argsort(-scores, kind="stable")
    best = AuditBound(0.0, m, 0, 0, 0, confidence, delta, tests)
    for k_in, k_out in candidates:
        top, bottom = order[:k_in], order[m - k_out :] if k_out else order[:0]
        correct = int(included[top].sum() + (~included[bottom]).sum())
        eps = epsilon_lower_bound(m, k_in + k_out, correct, significance=significance, delta=delta)
        if eps > best.epsilon_lower_bound:
            best = AuditBound(eps, m, k_in, k_out, correct, confidence, delta, tests)
    return best


def audit_from_score_sets(
    score_sets: dict[str, Sequence[float]],
    included: Sequence[bool],
    *,
    confidence: float = 0.95,
    delta: float = 0.0,
) -> tuple[str, AuditBound, dict[str, float]]:
    """The best bound over several pre-declared scores of the same canaries (e.g. two score
    functions, on each rank whose view differs): every (score set, k+, k-) is one test of the
    Bonferroni split. Returns the winning set's name, its bound, and each set's bound."""
    if not score_sets:
        raise ValueError("no scores to audit")
    included = np.asarray(included, dtype=bool)
    for name, s in score_sets.items():
        if len(s) != len(included):
            raise ValueError(f"score set {name!r} has {len(s)} scores for {len(included)} canaries")
    candidates = default_guess_counts(len(included))
    tests = len(score_sets) * len(candidates)
    per_set = {
        name: _best_guesses(np.asarray(s, dtype=np.float64), included, candidates, confidence, delta, tests)
        for name, s in score_sets.items()
    }
    winner = max(per_set, key=lambda name: per_set[name].epsilon_lower_bound)
    return winner, per_set[winner], {name: b.epsilon_lower_bound for name, b in per_set.items()}
