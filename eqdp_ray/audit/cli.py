"""`eqdp-ray audit CONFIG.yaml`: parse, call `run_audit`, print the bound beside the claimed epsilon.

Imported by eqdp_ray.cli at start-up for every command, so it imports nothing heavy at module level.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_audit(args: argparse.Namespace) -> int:
    from eqdp_ray.audit.run import check_audit_arguments, run_audit
    from eqdp_ray.config import load_config
    from eqdp_ray.privacy import format_epsilon, format_lower_bound
    from eqdp_ray.train.output import check_output_dir

    check_audit_arguments(args.canaries, args.workers, args.confidence)  # before any work: nothing drawn yet
    config = load_config(args.config, args.set)
    output = Path(args.output or Path("runs") / f"{config.name}-audit")
    check_output_dir(output)  # before the run: an audit is not lost to an unwritable place
    distributed = {"address": args.address} if args.address else {}
    record = run_audit(
        config,
        canaries=args.canaries,
        workers=args.workers,
        confidence=args.confidence,
        output_dir=output,
        **distributed,
    )
    claimed = record["claimed_epsilon"]
    verdict = "consistent with the claim" if record["epsilon_lower_bound"] <= claimed else "VIOLATES the claim"
    print(
        f"[eqdp-ray] audit: epsilon lower bound {format_lower_bound(record['epsilon_lower_bound'])} "
        f"({record['confidence']:.0%} confidence, {record['canaries']} canaries) "
        f"vs claimed epsilon {format_epsilon(claimed)} "
        f"at delta {record['delta']:g}: {verdict}"
    )
    if record["ranks_diverged"]:
        print(f"[eqdp-ray] audit: {record['ranks_diverged']}")
    print(f"[eqdp-ray] audit written to {output / 'audit.json'} (an audit, not a release: no model is kept)")
    return 0 if record["epsilon_lower_bound"] <= claimed else 1


def _whole_number(text: str) -> int:
    """An integer, also written as 1e4: the range is checked with the other arguments, in one clear line."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `audit` subcommand to the top-level parser (called by eqdp_ray.cli)."""
    p = subparsers.add_parser("audit", help="one run with canaries: an empirical lower bound on epsilon")
    p.add_argument("config", help="YAML run config (see configs/); the run is exactly what `train` would run")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. training.steps=10"
    )
    p.add_argument("--canaries", type=_whole_number, default=1000, help="number of gradient canaries M (default 1000)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (default: one process, no Ray)")
    p.add_argument("--address", default=None, help="Ray cluster address for --workers; default: a local Ray")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the lower bound (default 0.95)")
    p.add_argument("--output", help="directory for audit.json (default runs/<name>-audit)")
    p.set_defaults(handler=cmd_audit)
