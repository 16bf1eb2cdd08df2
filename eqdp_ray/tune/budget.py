"""The search-level budget of a study in scope `search`: its trial shapes, calibrated before the first trial.

This module only reads the space (which (sample rate, steps) trials it allows, how often they
release a validation score, how many trials it may run) and hands that to
`eqdp_ray.privacy.search.plan_search`, where all the arithmetic lives. A trial then asks
`trial_mechanism` for its sigma and its worst case, which the ledger reserves before it trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from eqdp_ray.config import SpaceError, default_of
from eqdp_ray.config.space import SearchSpace, TrialCount
from eqdp_ray.privacy import PrivacyBudgetError, check_delta_for_size, format_epsilon
from eqdp_ray.privacy.search import COMPOSITION, PAPERNOT_STEINKE, SearchPlan, TrialMechanism, TrialShape, plan_search
from eqdp_ray.privacy.search import score_releases as releases_of
from eqdp_ray.tune.feasibility import privacy_candidates

SCOPE_TRIAL_NOTE = (
    "budget scope 'trial': each trial alone is ({eps}, {delta})-DP, but the search as a whole, and so the best "
    "model you release, is NOT covered by any bound: releasing it leaks more than one trial's epsilon; training "
    "loss/accuracy and exact validation scores also leave every trial. Use privacy.scope: search for one "
    "(epsilon, delta) for the whole search (docs/PRIVACY.md)."
)


def in_search_scope(space: SearchSpace) -> bool:
    return space.privacy.get("scope", "search") == "search"


def eval_every_of(space: SearchSpace, sample_rate: float) -> int:
    """Steps between a trial's validation passes, as the loop will use them."""
    if "training.eval_every" in space.search:
        raise SpaceError(
            f"{space.source + ': ' if space.source else ''}in privacy scope 'search' training.eval_every must be "
            "fixed, not searched: it sets how many validation scores each trial releases"
        )
    every = space.fixed.get("training.eval_every", default_of("training.eval_every"))
    return int(every) if every else max(1, round(1 / sample_rate))


def trial_shapes(space: SearchSpace, train_size: int) -> list[TrialShape]:
    """Every (sample rate, planned steps, score releases) a trial of this space can run."""
    candidates = privacy_candidates(space, train_size)
    if candidates is None:
        raise SpaceError(
            f"{space.source + ': ' if space.source else ''}a search-level budget needs every trial calibrated before "
            "it starts, so the searched batch size / sample rate and steps / epochs must take finitely many values "
            "(categorical, or int ranges) with at most 64 combinations; use categorical choices"
        )
    public = bool(space.privacy.get("public_validation"))
    return [
        TrialShape(q, steps, 0 if public else releases_of(steps, eval_every_of(space, q))) for q, steps in candidates
    ]


def score_noise_of(space: SearchSpace, val_size: int) -> float | None:
    """Std of the noise on each released count of correct predictions (None: public validation, exact)."""
    if space.privacy.get("public_validation"):
        return None
    return float(space.privacy["validation_noise"]) * max(1, val_size)


#: What a Papernot-Steinke bound leaves out (Papernot & Steinke 2022 cover releasing only the best trial's output).
PS_NOT_COVERED = (
    "NOT covered, so do not release them: the other trials' rows and scores, the number of trials or attempts, and "
    "the trial logs"
)


@dataclass(frozen=True)
class BudgetDescription:
    plan: SearchPlan
    shapes: tuple[TrialShape, ...]

    def describe(self) -> str:
        p = self.plan
        how = (
            f"composition of at most {p.max_trials} trials, adaptively chosen (TPE/ASHA)"
            if p.method == COMPOSITION
            else f"Papernot-Steinke: best of a secret random number of trials (mean {p.distribution['mean']:.3g})"
        )
        noise = (
            f"validation scores noised (std {p.score_noise:.3g} correct predictions)"
            if p.score_noise
            else "validation declared public: exact scores, not accounted"
        )
        covers = (
            "for the whole study and the model it releases"
            if p.method == COMPOSITION
            else "for the best trial's configuration, score and model only"
        )
        tail = "" if p.method == COMPOSITION else f"; {PS_NOT_COVERED}"
        return (
            f"search privacy: ({format_epsilon(p.epsilon)}, {p.delta:.3g})-DP {covers} "
            f"[{how}; {p.theorem}]; each trial alone at most epsilon {format_epsilon(p.trial_epsilon)}; {noise}; training "
            f"loss/accuracy do not leave the trials{tail}"
        )


def plan_study_budget(space: SearchSpace, train_size: int, val_size: int) -> BudgetDescription:
    """Calibrate every trial shape of the space so that the whole study stays within its (epsilon, delta)."""
    shapes = trial_shapes(space, train_size)
    p = space.privacy
    try:
        check_delta_for_size(float(p["delta"]), train_size)
        if isinstance(space.num_samples, TrialCount):
            count = space.num_samples
            plan = plan_search(
                float(p["target_epsilon"]),
                float(p["delta"]),
                shapes,
                method=PAPERNOT_STEINKE,
                distribution=count.distribution,
                mean_trials=count.mean,
                eta=count.eta,
                score_noise=score_noise_of(space, val_size),
            )
        else:
            plan = plan_search(
                float(p["target_epsilon"]),
                float(p["delta"]),
                shapes,
                method=COMPOSITION,
                max_trials=int(space.num_samples),
                score_noise=score_noise_of(space, val_size),
            )
    except PrivacyBudgetError as exc:
        raise SpaceError(f"{space.source + ': ' if space.source else ''}{exc}") from None
    return BudgetDescription(plan, tuple(shapes))


def trial_shape(space: SearchSpace, sample_rate: float, steps: int) -> TrialShape:
    public = bool(space.privacy.get("public_validation"))
    return TrialShape(sample_rate, steps, 0 if public else releases_of(steps, eval_every_of(space, sample_rate)))


def trial_mechanism(plan: SearchPlan, space: SearchSpace, sample_rate: float, steps: int) -> TrialMechanism:
    """The planned worst case of a trial: its sigma (from the plan), steps and score releases."""
    shape = trial_shape(space, sample_rate, steps)
    for planned in plan.sigmas:  # the trial computed q itself: match it to the plan's to float precision
        q, t, r = planned.split("/")
        if (
            int(t) == shape.steps
            and int(r) == shape.score_releases
            and math.isclose(float(q), sample_rate, rel_tol=1e-9)
        ):
            return TrialMechanism(plan.sigmas[planned], sample_rate, steps, plan.score_noise, shape.score_releases)
    return plan.mechanism_for(shape)  # raises: a shape the plan does not know is a bug
