"""A printed epsilon is rounded up: it never claims more privacy than the accountant gave."""

import math

import numpy as np
import pytest

from eqdp_ray.privacy import format_epsilon, format_lower_bound


@pytest.mark.parametrize(
    "epsilon, text",
    [
        (8.0, "8"),
        (8.0 * (1 + 1e-9), "8"),  # a trial target's float slack is not a digit
        (7.999999999, "8"),
        (2.4531, "2.454"),  # up, where round-to-nearest would print 2.453
        (2.459, "2.459"),
        (0.12341, "0.1235"),
        (9.99951, "10"),
        (123.41, "123.5"),
        (math.inf, "inf"),
    ],
)
def test_known_values(epsilon, text):
    assert format_epsilon(epsilon) == text


def test_never_below_the_value_and_within_one_unit_of_the_last_digit():
    rng = np.random.default_rng(0)
    for epsilon in np.exp(rng.uniform(np.log(1e-3), np.log(1e3), 2000)):
        shown = float(format_epsilon(epsilon))
        assert shown >= epsilon * (1 - 1e-8)
        assert shown - epsilon <= 10 ** (math.floor(math.log10(epsilon)) - 3) * 1.000001


@pytest.mark.parametrize(
    "bound, text",
    [(2.453, "2.453"), (2.45399, "2.453"), (0.99951, "0.9995"), (8.0, "8"), (123.456789, "123.4"), (0.0, "0")],
)
def test_a_lower_bound_is_rounded_down(bound, text):
    assert format_lower_bound(bound) == text


def test_a_bound_within_its_claim_never_reads_above_it():
    """Printed side by side (bound down, claim up), the order of the exact values is kept."""
    rng = np.random.default_rng(1)
    for claim in np.exp(rng.uniform(np.log(1e-2), np.log(1e2), 500)):
        for bound in (claim, claim * (1 - 1e-7), claim * rng.uniform(0, 1)):
            assert float(format_lower_bound(bound)) <= bound <= claim <= float(format_epsilon(claim))
