"""`run_audit`: one training run of a config with white-box gradient canaries, then the bound.

The run is the very mechanism `eqdp-ray train` runs (the same loop, Poisson sampler, clipping,
single noise draw and accountant, in one process or on Ray Train workers); the canaries are
extra examples whose inclusion the auditor decides by fair coins (eqdp_ray.privacy.canaries).
An audit is not a release: it writes `audit.json` (coins, scores, bound), never a model, a
`result.json` or a results-store row.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eqdp_ray import __version__
from eqdp_ray.config import RunConfig, config_to_dict
from eqdp_ray.config.errors import UserError
from eqdp_ray.privacy import GradientCanaries, audit_from_score_sets, format_epsilon, format_lower_bound
from eqdp_ray.privacy.canaries import SCORES

logger = logging.getLogger(__name__)

AUDIT_FILE = "audit.json"

#: The most canaries an audit takes. Each is a coin drawn up front, a row of scores updated at
#: every step and written to audit.json, and a dense gradient row whenever it is sampled; beyond
#: this the bound gains little (about log M) while memory and the record grow with M.
MAX_CANARIES = 100_000


def check_audit_arguments(canaries: int, workers: int, confidence: float) -> None:
    """Refuse bad audit arguments before anything is drawn, loaded or trained."""
    if isinstance(canaries, bool) or not isinstance(canaries, int) or not 1 <= canaries <= MAX_CANARIES:
        raise UserError(
            f"--canaries must be at least 1 and at most {MAX_CANARIES:,}, got {canaries!r}: each canary is a coin "
            "drawn before training and a row of scores kept every step and written to audit.json (and it needs a "
            "model coordinate of its own, so at most the model's trainable parameters)"
        )
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers!r}")
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise UserError(f"--confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence!r}")


def draw_coins(count: int, seed: int | None = None) -> list[bool]:
    """The auditor's fair coins: from the OS's CSPRNG, or from `seed` for a reproducible test."""
    if seed is None:
        return [bool(secrets.randbits(1)) for _ in range(count)]
    return (np.random.default_rng(seed).random(count) < 0.5).tolist()


def _score_sets(observations: list[np.ndarray]) -> dict[str, np.ndarray]:
    """One score set per (score function, distinct rank view); identical views are one test."""
    sets: dict[str, np.ndarray] = {}
    distinct: list[np.ndarray] = []
    for rank, matrix in enumerate(observations):
        if any(np.array_equal(matrix, seen) for seen in distinct):
            continue
        distinct.append(matrix)
        for row, name in enumerate(SCORES):
            sets[f"{name}@rank{rank}"] = matrix[row]
    return sets


def run_audit(
    config: RunConfig,
    *,
    canaries: int = 1000,
    workers: int = 1,
    confidence: float = 0.95,
    output_dir: str | Path | None = None,
    coin_seed: int | None = None,
    coordinate_seed: int = 0,
    norm_multiple: float = 10.0,
    log: Callable[[str], None] | None = print,
    **distributed: Any,
) -> dict[str, Any]:
    """Train `config` once with `canaries` gradient canaries and return the audit record."""
    from eqdp_ray.train import train

    check_audit_arguments(canaries, workers, confidence)
    coins = draw_coins(canaries, coin_seed)
    spec = GradientCanaries(coins, coordinate_seed=coordinate_seed, norm_multiple=norm_multiple)
    started = time.time()
    diverged = None
    if workers > 1 or distributed:
        from eqdp_ray.audit.distributed import audit_distributed

        result, observations, diverged = audit_distributed(
            config, spec, workers=workers, output_dir=output_dir, log=log, **distributed
        )
    else:
        result = train(config, canaries=spec, log=log)
        observations = [spec.score_matrix().numpy()]
    wall = time.time() - started
    p = config.privacy
    sets = _score_sets(observations)
    winner, bound, per_set = audit_from_score_sets(sets, coins, confidence=confidence, delta=p.delta)
    claimed = result["epsilon"] if result is not None else None
    record = {
        "kind": "audit (not a release: canaries were inserted; do not use this model or record as a result)",
        "method": "one-run audit, Steinke, Nasr & Jagielski (NeurIPS 2023), white-box Dirac gradient canaries",
        "epsilon_lower_bound": bound.epsilon_lower_bound,
        "claimed_epsilon": claimed,
        "delta": p.delta,
        "confidence": confidence,
        "canaries": canaries,
        "guesses_in": bound.guesses_in,
        "guesses_out": bound.guesses_out,
        "correct": bound.correct,
        "tests": bound.candidates,
        "winning_score": winner,
        "bound_per_score": per_set,
        "ranks_diverged": diverged,
        "noise_multiplier": result["noise_multiplier"] if result else None,
        "sample_rate": result["sample_rate"] if result else None,
        "steps": result["steps"] if result else None,
        "max_grad_norm": p.max_grad_norm,
        "canary_norm": norm_multiple * p.max_grad_norm,
        "coordinate_seed": coordinate_seed,
        "coins": "fixed seed (reproducible test)" if coin_seed is not None else "secure (os CSPRNG)",
        "included": coins,
        "scores": {name: values.tolist() for name, values in sets.items()},
        "workers": workers,
        "wall_time_s": wall,
        "package_version": __version__,
        "torch_version": torch.__version__,
        "run": None if result is None else {k: v for k, v in result.items() if k != "history"},
        "config": config_to_dict(config),
        "recompute": "eqdp_ray.privacy.audit_from_score_sets(scores, included, confidence=confidence, delta=delta)",
    }
    if log:
        log(
            f"[eqdp-ray] audit: empirical epsilon >= {format_lower_bound(bound.epsilon_lower_bound)} at {confidence:.0%} confidence "
            f"({canaries} canaries, {bound.correct} of {bound.guesses_in + bound.guesses_out} guesses right); "
            f"the run claims epsilon = {claimed if claimed is None else format_epsilon(claimed)} at delta = {p.delta:g}"
        )
    if output_dir is not None:
        write_audit(record, output_dir)
    return record


def write_audit(record: dict[str, Any], output_dir: str | Path) -> Path:
    """Write DIR/audit.json atomically (written, then renamed)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / AUDIT_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=_jsonable))
    os.replace(tmp, path)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to {AUDIT_FILE}")
