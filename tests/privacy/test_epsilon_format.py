"""A printed epsilon is rounded up: it never claims more privacy than the accountant gave."""

import math

import numpy as np
import pytest

from eqdp_ray.privacy import format_epsilon


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
