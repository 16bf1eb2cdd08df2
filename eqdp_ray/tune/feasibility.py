"""Whether a search space can run at all, checked on the driver before any trial starts.

What the schema (`eqdp_ray.config.space`) cannot see without the data: that sampled trial configs
pass `parse_config` and the model registry (every categorical choice and both ends of every range
are tried, each with its conditions made to hold), that no expected batch exceeds the training
set, and that at least one point of the space can meet the fixed (epsilon, delta) at all. The
(sample rate, steps) pairs a space can reach also feed the privacy bound of a random-count search.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eqdp_ray.config import ConfigError, SpaceError, default_of
from eqdp_ray.config.space import CONDITION_DEFAULTS, SAMPLE_RATE, SearchSpace, trial_config
from eqdp_ray.data import batch_too_large_message
from eqdp_ray.privacy import PrivacyBudgetError, check_delta_for_size, format_epsilon, plan_privacy


@dataclass(frozen=True)
class SpaceCheck:
    """What `check_space` found: the configs it tried and the privacy corners of the space."""

    train_size: int
    points_checked: int
    easiest: tuple[float, int]  # (sample rate, steps) that needs the least noise
    hardest: tuple[float, int]
    hardest_feasible: bool
    warnings: tuple[str, ...] = ()


def _activate(space: SearchSpace, key: str) -> dict[str, Any]:
    """Values for the ancestors of `key` that make its conditions hold (first allowed value each)."""
    forced: dict[str, Any] = {}
    for parent, allowed in space.search[key].when:
        if parent in space.search:  # dependency order rules out cycles
            forced.update(_activate(space, parent))
            forced[parent] = allowed[0]
    return forced


def _point(space: SearchSpace, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A full parameter assignment: overrides where given, the first corner elsewhere."""
    values: dict[str, Any] = dict(CONDITION_DEFAULTS)
    values.update(space.fixed)
    params: dict[str, Any] = {}
    for key, dist in space.search.items():
        if not dist.active(values):
            continue
        value = overrides[key] if key in overrides else dist.corners()[0]
        values[key] = params[key] = value
    return params


def corner_points(space: SearchSpace) -> list[dict[str, Any]]:
    """Every choice and both ends of every range, each with its conditions made to hold."""
    points = [_point(space, {})]
    for key, dist in space.search.items():
        forced = _activate(space, key)
        for value in dist.corners():
            points.append(_point(space, {**forced, key: value}))
    unique: dict[str, dict[str, Any]] = {}
    for p in points:
        unique.setdefault(json.dumps(p, sort_keys=True, default=str), p)
    return list(unique.values())


def _privacy_support(space: SearchSpace, key: str, limit: int) -> list[Any] | None:
    """The values a privacy-relevant key can take (None: not set by the space)."""
    values: list[Any] = []
    if key in space.fixed:
        values.append(space.fixed[key])
    if key in space.search:
        support = space.search[key].support(limit)
        if support is None:
            return None
        values.extend(support)
        if space.search[key].when:  # when the condition fails the default applies
            default = default_of(key)
            if default is not None:
                values.append(default)
    return values


def privacy_candidates(space: SearchSpace, train_size: int, *, limit: int = 64) -> list[tuple[float, int]] | None:
    """Every (sample rate, steps) a trial of this space can run, or None if there are too many.

    Only these two decide a trial's privacy curve (sigma follows from them and the fixed budget);
    the clip norm, learning rate, model and augmentation do not.
    """
    if SAMPLE_RATE in space.fixed or SAMPLE_RATE in space.search:
        rates = _privacy_support(space, SAMPLE_RATE, limit)
        batches = None if rates is None else [max(1, round(float(r) * train_size)) for r in rates]
    else:
        batches = _privacy_support(space, "training.batch_size", limit) or [default_of("training.batch_size")]
    by_steps = "training.steps" in space.fixed or "training.steps" in space.search
    lengths = _privacy_support(space, "training.steps" if by_steps else "training.epochs", limit)
    if batches is None or lengths is None:
        return None
    out: set[tuple[float, int]] = set()
    for batch in {int(b) for b in batches}:
        q = batch / train_size
        if by_steps:
            out.update((q, int(s)) for s in lengths)
        else:
            out.update((q, max(1, math.ceil(float(e) / q))) for e in lengths)
    if len(out) > limit:
        return None
    return sorted(out)


def _range_ends(space: SearchSpace, key: str) -> list[Any]:
    values = []
    if key in space.fixed:
        values.append(space.fixed[key])
    if key in space.search:
        values.extend(space.search[key].corners())
        if space.search[key].when and default_of(key) is not None:
            values.append(default_of(key))
    return values


def privacy_corners(space: SearchSpace, train_size: int) -> list[tuple[float, int]]:
    """(q, steps) at the ends of the ranges: privacy cost grows with q and steps (and with q at fixed epochs)."""
    if SAMPLE_RATE in space.fixed or SAMPLE_RATE in space.search:
        batches = [max(1, round(float(r) * train_size)) for r in _range_ends(space, SAMPLE_RATE)]
    else:
        batches = [int(b) for b in _range_ends(space, "training.batch_size")] or [default_of("training.batch_size")]
    out = set()
    for batch in batches:
        q = batch / train_size
        if "training.steps" in space.fixed or "training.steps" in space.search:
            out.update((q, int(s)) for s in _range_ends(space, "training.steps"))
        else:
            out.update((q, max(1, math.ceil(float(e) / q))) for e in _range_ends(space, "training.epochs"))
    return sorted(out)


def check_space(space: SearchSpace, train_size: int) -> SpaceCheck:
    """Fail before any trial starts if sampled configs are invalid or no trial can meet the budget."""
    from eqdp_ray.models import resolve_options

    points = corner_points(space)
    for params in points:
        try:
            config = trial_config(space, params, train_size)
            resolve_options(config.model.name, **config.model.options)  # names only: building takes seconds
        except (ConfigError, ValueError) as exc:
            keys = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "(nothing searched)"
            # a config error names its key already; the model registry's names only the option
            blame = "" if isinstance(exc, ConfigError) else space.key_source.where(("model", "options"))
            raise SpaceError(
                f"{space.source + ': ' if space.source else ''}the trial config at {keys} is invalid: {blame}{exc}"
            ) from None
        if config.training.batch_size > train_size:
            which = SAMPLE_RATE if SAMPLE_RATE in params else "training.batch_size"
            d = space.data
            message = batch_too_large_message(
                which, config.training.batch_size, train_size, train_subset=d["train_subset"], val_size=d["val_size"]
            )
            raise SpaceError(f"{space.source + ': ' if space.source else ''}{message}")

    p = space.privacy
    corners = privacy_corners(space, train_size)
    try:
        check_delta_for_size(float(p["delta"]), train_size)
    except PrivacyBudgetError as exc:
        raise SpaceError(f"{space.source + ': ' if space.source else ''}{exc}") from None
    feasible: list[tuple[float, int]] = []
    first_error = ""
    for q, steps in corners:
        try:
            plan_privacy(float(p["target_epsilon"]), float(p["delta"]), q, steps, str(p["accountant"]))
            feasible.append((q, steps))
        except PrivacyBudgetError as exc:
            first_error = first_error or str(exc)
    key = lambda c: (c[0], c[1])  # noqa: E731 - cost grows with both
    easiest, hardest = min(corners, key=key), max(corners, key=key)
    if not feasible:
        raise SpaceError(
            f"{space.source + ': ' if space.source else ''}no trial of this space can meet the privacy budget "
            f"epsilon={format_epsilon(p['target_epsilon'])}, delta={p['delta']}: even the smallest sample rate "
            f"{easiest[0]:.4g} with {easiest[1]} steps fails ({first_error})"
        )
    warnings = []
    if hardest not in feasible:
        warnings.append(
            f"some trials cannot meet epsilon={format_epsilon(p['target_epsilon'])} (e.g. q={hardest[0]:.4g}, {hardest[1]} steps); "
            "they are recorded as failed with val_accuracy 0 and do not stop the search"
        )
    return SpaceCheck(train_size, len(points), easiest, hardest, hardest in feasible, tuple(warnings))


def split_sizes_of(space: SearchSpace) -> tuple[int, int]:
    """Load the data set once (on the driver): the training size the sample rate divides, and the validation size."""
    from eqdp_ray.data import load_dataset

    d = space.data  # a complete DataConfig, as a dict: its defaults are the run config's
    data = load_dataset(
        d["name"],
        d["root"],
        download=d["download"],
        val_size=d["val_size"],
        seed=int(space.fixed.get("seed", default_of("seed"))),
        train_subset=d["train_subset"],
        test_subset=d["test_subset"],
    )
    return len(data.train_y), len(data.val_y)


def train_size_of(space: SearchSpace) -> int:
    """The training-set size the sample rate divides (loads the data set once, on the driver)."""
    return split_sizes_of(space)[0]
