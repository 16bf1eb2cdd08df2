"""`eqdp-ray tune SPACE.yaml`: parse, call `run_search`, print the best trials and the search's privacy.

Imported by eqdp_ray.cli at start-up for every command, so it imports nothing heavy at module level.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from eqdp_ray.config.storage import DEFAULT_STORE_URI

#: The summary's column that the printed table leaves out (it stays in the Python summary).
UNPRINTED_COLUMNS = frozenset({"final_val_accuracy"})


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4g}"
    return str(value)


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain aligned table (the same columns for every row)."""
    if not rows:
        return "(no trials)"
    from eqdp_ray.privacy import format_epsilon
    from eqdp_ray.tune.runner import SUMMARY_COLUMNS

    def cell(column: str, value: Any) -> str:  # an epsilon is rounded up: never more privacy than accounted
        if column == "epsilon" and isinstance(value, float) and not math.isnan(value):
            return format_epsilon(value)
        return _fmt(value)

    columns = [c for c in SUMMARY_COLUMNS if c in rows[0] and c not in UNPRINTED_COLUMNS]
    table = [columns] + [[cell(c, r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table)


def cmd_tune(args: argparse.Namespace) -> int:
    from eqdp_ray.results.export import plural
    from eqdp_ray.tune.runner import run_search, validate_space

    if args.check:
        space, check, privacy = validate_space(args.space, args.set)
        print(
            f"[eqdp-ray] {args.space}: study '{space.study}' is valid ({check.points_checked} sampled configs, "
            f"{check.train_size} training examples; least private corner q={check.hardest[0]:.4g} x "
            f"{check.hardest[1]} steps {'meets' if check.hardest_feasible else 'cannot meet'} the budget)"
        )
        for warning in check.warnings:
            print(f"[eqdp-ray] warning: {warning}")
        if privacy is not None:
            print(f"[eqdp-ray] {privacy.describe()}")
        return 0

    summary = run_search(
        args.space,
        store=args.store,
        address=args.address,
        resume=args.resume,
        storage_path=args.storage,
        overrides=args.set,
        oversubscribe=args.oversubscribe,
        log=print,
    )
    if summary.best_only:  # Papernot-Steinke: the bound covers the best trial's output alone, not the count
        print(f"\n[eqdp-ray] study '{summary.study}': store {summary.store}; experiment {summary.experiment_path}")
        print(
            "[eqdp-ray] the best trial by validation accuracy, the only output its Papernot-Steinke bound covers "
            "(test accuracy is recorded, never used to select):"
        )
        # no trial finished: the search has no output (saying how many ran, or that none did, is not covered)
        print(format_rows(summary.top[:1]) if summary.top else "(no output: no finished trial with a score)")
        print(f"[eqdp-ray] {summary.privacy_note}")
        print(f"[eqdp-ray] next: eqdp-ray best --store {summary.store} --study {summary.study}")
        return 0
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.status_counts.items())) or "none"
    print(
        f"\n[eqdp-ray] study '{summary.study}': {plural(summary.num_trials, 'trial')} ({counts}); store {summary.store}; "
        f"experiment {summary.experiment_path}"
    )
    print("[eqdp-ray] top trials by validation accuracy (test accuracy is recorded, never used to select):")
    print(format_rows(summary.top))
    if summary.pareto:
        print("[eqdp-ray] Pareto front:")
        print(format_rows(summary.pareto))
    print(f"[eqdp-ray] {summary.privacy_note}")
    print(f"[eqdp-ray] next: eqdp-ray best --store {summary.store} --study {summary.study}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `tune` subcommand to the top-level parser (called by eqdp_ray.cli)."""
    p = subparsers.add_parser("tune", help="search hyperparameters within one privacy budget")
    p.add_argument("space", help="search space YAML (see search_spaces/ and docs/SEARCH_SPACES.md)")
    p.add_argument(
        "--store",
        default=DEFAULT_STORE_URI,
        help=f"results store: local path or s3://, gs:// URI (default {DEFAULT_STORE_URI})",
    )
    p.add_argument("--address", default=None, help="Ray cluster address ('auto' or ray://...); default: a local Ray")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted study: finished trials are kept, "
        "unfinished and errored ones resume from their last checkpoint",
    )
    p.add_argument("--storage", default=None, help="Ray Tune experiment storage (default <store>/experiments)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the space, e.g. num_samples=2, fixed.training.steps=50, search.training.lr.high=4",
    )
    p.add_argument("--check", action="store_true", help="validate the space (and its privacy) and exit")
    p.add_argument(
        "--oversubscribe",
        action="store_true",
        help="let a local Ray run trials that need more CPUs than this machine has (default: refuse)",
    )
    p.set_defaults(handler=cmd_tune)
