"""Epsilon as people read it: a few significant digits, rounded up, so a printed epsilon never claims
more privacy than was accounted (2.4531 is shown as 2.454, not 2.453).

Relative noise below 1e-8 is ignored before rounding up: a trial's target carries a (1 + 1e-9)
float slack (`tune/trial.py`), and 8 * (1 + 1e-9) should read 8, not 8.001. That is far below
the accountants' own precision (calibration stops within 0.5% of the target).
"""

from __future__ import annotations

import math
from decimal import ROUND_FLOOR, Decimal

#: Relative float noise ignored before rounding up (see the module docstring); above the trials' 1e-9.
FLOAT_SLACK = 1e-8


def format_epsilon(epsilon: float, digits: int = 4) -> str:
    """`epsilon` rounded UP to `digits` significant digits, without trailing zeros (8, 2.46, 0.1235)."""
    epsilon = float(epsilon)
    if not math.isfinite(epsilon) or epsilon <= 0:
        return f"{epsilon:g}"  # inf (no finite claim), 0, nan: nothing to round
    exponent = math.floor(math.log10(epsilon)) - digits + 1
    units = math.ceil(epsilon / 10.0**exponent * (1 - FLOAT_SLACK))
    # units * 10**exponent is within one ulp of the decimal; formatting to `digits` places returns that decimal
    return f"{units * 10.0**exponent:.{digits + (units >= 10**digits)}g}"


def format_lower_bound(value: float, digits: int = 4) -> str:
    """An audit's empirical epsilon lower bound rounded DOWN to `digits` significant digits, the
    conservative direction for a lower bound: printed beside a claim rounded up, a run whose bound
    is within its claim never reads as a violation, and one printed above its claim is one."""
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        return f"{value:g}"
    exact = Decimal(repr(value))  # the shortest decimal of the float: 2.453 stays 2.453
    step = Decimal(1).scaleb(exact.adjusted() - digits + 1)
    return f"{exact.quantize(step, rounding=ROUND_FLOOR).normalize():f}"
