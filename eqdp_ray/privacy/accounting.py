"""Calibrate sigma to a fixed (epsilon, delta) and report what was really spent.

Opacus's accountants do the mathematics; this module makes sure they are asked about exactly
the mechanism that runs: the same sample rate q the Poisson sampler uses and the same number
of noisy steps the loop takes (each step is counted, even one whose sampled batch is empty).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from eqdp_ray.privacy.epsilon_format import format_epsilon
from eqdp_ray.privacy.errors import PrivacyBudgetError

ACCOUNTANTS = ("rdp", "prv")


@contextlib.contextmanager
def _without_alpha_hint() -> Iterator[None]:
    """Opacus warns "optimal order is the largest alpha" at large epsilon; the bound it returns is
    still valid (only looser), and the hint would land before eqdp-ray's own one-line messages."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        yield


@dataclass(frozen=True)
class PrivacyPlan:
    """The noise that a run will add and the budget that noise buys."""

    target_epsilon: float
    delta: float
    sample_rate: float
    steps: int
    noise_multiplier: float
    accountant: str
    epsilon: float  # what (noise_multiplier, sample_rate, steps) actually spends


def check_epsilon_delta(target_epsilon: float, delta: float) -> None:
    """Refuse a budget no accountant can meet: one home for the check that runs, searches and audits share."""
    if not (isinstance(target_epsilon, (int, float)) and math.isfinite(target_epsilon) and target_epsilon > 0):
        raise PrivacyBudgetError(f"target epsilon must be a finite number > 0, got {target_epsilon!r}")
    if not (0 < delta < 1):
        raise PrivacyBudgetError(f"delta must lie strictly between 0 and 1, got {delta!r} (typical: 1e-5, below 1/N)")


def check_budget(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise PrivacyBudgetError(f"unknown accountant {accountant!r}: use one of {', '.join(ACCOUNTANTS)}")
    check_epsilon_delta(target_epsilon, delta)
    if not (0 < sample_rate <= 1):
        raise PrivacyBudgetError(
            f"sample rate must lie in (0, 1], got {sample_rate!r}: the expected batch size must not exceed the training set"
        )
    if steps < 1:
        raise PrivacyBudgetError(f"the number of steps must be at least 1, got {steps}")


def check_delta_for_size(delta: float, train_size: int) -> None:
    """Refuse a delta of 1/N or more: a mechanism that publishes one random training example in the
    clear is (0, 1/N)-DP, so such a guarantee protects no one."""
    if train_size > 0 and delta >= 1 / train_size:
        raise PrivacyBudgetError(
            f"delta={delta!r} is not below 1/N = {1 / train_size:.3g} for the {train_size} training examples: "
            "at that delta, releasing one random example in the clear meets the guarantee. Use a delta well "
            f"below 1/N (typical: 1e-5, or 1/N^1.1 = {train_size**-1.1:.2g})"
        )


def epsilon_spent(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon of `steps` Poisson-subsampled Gaussian steps, as the chosen accountant computes it."""
    if steps == 0:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    with _without_alpha_hint():
        return float(acc.get_epsilon(delta=delta))


def plan_privacy(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> PrivacyPlan:
    """The smallest noise multiplier (to a tolerance) whose spent epsilon does not exceed the target."""
    check_budget(target_epsilon, delta, sample_rate, steps, accountant)
    try:
        with _without_alpha_hint():
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=0.005 * target_epsilon,
            )
    except ValueError as exc:  # Opacus: "The privacy budget is too low."
        raise PrivacyBudgetError(
            f"no noise multiplier reaches epsilon={format_epsilon(target_epsilon)} at delta={delta} with sample rate {sample_rate:.4g} "
            f"over {steps} steps ({exc}); raise epsilon or delta, or lower the sample rate or the number of steps"
        ) from None
    spent = epsilon_spent(sigma, sample_rate, steps, delta, accountant)
    if not spent <= target_epsilon:  # never report more than the budget, whatever the search did
        raise PrivacyBudgetError(
            f"calibration gave sigma={sigma:.4f} spending epsilon={format_epsilon(spent)} > target {format_epsilon(target_epsilon)}; "
            "this is a bug in eqdp-ray, please report it"
        )
    return PrivacyPlan(target_epsilon, delta, sample_rate, steps, float(sigma), accountant, spent)


def plan_fixed_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    noise_multiplier: float,
    accountant: str = "rdp",
) -> PrivacyPlan:
    """A run whose sigma was chosen for it (by a search's calibration, `privacy.search`): check, do not calibrate.

    The search has already accounted this run at sigma; the run's own epsilon (what its steps
    spend by the chosen accountant) must still not exceed the per-trial target it was given.
    """
    check_budget(target_epsilon, delta, sample_rate, steps, accountant)
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise PrivacyBudgetError(f"a fixed noise multiplier must be a finite number > 0, got {noise_multiplier!r}")
    spent = epsilon_spent(noise_multiplier, sample_rate, steps, delta, accountant)
    if not spent <= target_epsilon * (1 + 1e-9):
        raise PrivacyBudgetError(
            f"noise multiplier {noise_multiplier:.4f} spends epsilon={format_epsilon(spent)} over {steps} steps at sample rate "
            f"{sample_rate:.4g}, above this run's target {format_epsilon(target_epsilon)}; raise the noise or lower the steps"
        )
    return PrivacyPlan(target_epsilon, delta, sample_rate, steps, float(noise_multiplier), accountant, spent)
