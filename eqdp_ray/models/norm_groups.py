"""How many normalisation groups a layer gets: one rule for every model, so that a comparison
between an equivariant model and its baseline does not hide a difference in normalisation."""

from __future__ import annotations


def norm_group_count(units: int, requested: int) -> int:
    """Groups for `units` channels (baselines) or fields (equivariant models) when `requested` are asked for.

    ``requested`` is used when it divides the count. Otherwise, like the reference implementation
    (Hoelzl et al. 2023), the divisor closest to it among those leaving more than 3 units per group
    (tiny groups normalise badly), falling back to a single group (layer norm).
    """
    if requested < 1:
        raise ValueError(f"num_groups must be >= 1, got {requested}")
    if requested <= units and units % requested == 0:
        return requested
    candidates = [d for d in range(1, units + 1) if units % d == 0 and units // d > 3]
    if not candidates:
        return 1
    return min(candidates, key=lambda d: (abs(d - requested), d))
