"""`eqdp-ray`: a thin command-line face over the Python API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from eqdp_ray.config.errors import UserError

DESCRIPTION = """\
eqdp-ray: differentially private training (DP-SGD) of E(2)-equivariant CNNs,
on one machine or a Ray cluster. Train one model at a fixed (epsilon, delta),
search hyperparameters under a budget that covers the whole search, keep every
trial in a Parquet results store, and audit a run's privacy empirically."""

EPILOG = """\
start here (offline, CPU, minutes):
  eqdp-ray train configs/quickstart.yaml
  eqdp-ray tune search_spaces/quickstart.yaml
  eqdp-ray best --study quickstart

`eqdp-ray COMMAND --help` lists its options; README.md and docs/ say more."""


def cmd_train(args: argparse.Namespace) -> int:
    from eqdp_ray.config import load_config
    from eqdp_ray.train import train, write_result
    from eqdp_ray.train.output import check_output_dir

    config = load_config(args.config, args.set)
    output = Path(args.output or Path("runs") / config.name)
    check_output_dir(output)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if (args.workers or 1) > 1 or args.address or args.gpus_per_worker:
        from eqdp_ray.train.distributed import train_distributed

        result = train_distributed(
            config,
            workers=args.workers or 1,
            gpus_per_worker=args.gpus_per_worker or 0.0,
            address=args.address,
            storage=args.storage,
            output_dir=output,
            oversubscribe=args.oversubscribe,
            log=print,
        )
    else:
        result = train(config, log=print)
    path = write_result(result, output)
    print(f"[eqdp-ray] result written to {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from eqdp_ray.models import MODELS, model_summary

    rows = []
    for name in MODELS:
        summary = model_summary(name, in_channels=3, num_classes=10)
        rows.append((name, f"{summary['params']:,}", str(summary.get("group") or "-"), summary["description"]))
    widths = [max(len(r[i]) for r in rows + [("model", "params", "group", "description")]) for i in range(4)]
    header = ("model", "params", "group", "description")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print("(parameter counts for 3x32x32 inputs and 10 classes, default options)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eqdp-ray",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the paragraphs and the example lines
    )
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")

    p = sub.add_parser("train", help="train one model with DP-SGD from a YAML config")
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. training.lr=1.0"
    )
    p.add_argument("--output", help="output directory (default runs/<name>)")
    p.add_argument(
        "--workers", type=int, default=None, help="number of Ray Train workers (default: one process, no Ray)"
    )
    p.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per Ray Train worker")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto' or ray://...); default: a local Ray")
    p.add_argument(
        "--storage", default=None, help="checkpoint storage (local path, s3://, gs://); default under --output"
    )
    p.add_argument(
        "--oversubscribe",
        action="store_true",
        help="let a local Ray run more worker CPUs than this machine has (default: refuse)",
    )
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("models", help="list the models and their parameter counts")
    p.set_defaults(handler=cmd_models)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Commands of higher layers (audit, tuning, results) that register themselves if present."""
    registrars = []
    for module_name in ("eqdp_ray.audit.cli", "eqdp_ray.tune.cli", "eqdp_ray.results.cli"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        registrars.append(module.register)
    return registrars


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("eqdp-ray: interrupted", file=sys.stderr)
        return 130
    except UserError as exc:  # only input the user must fix; any other error is a bug and keeps its traceback
        print(f"eqdp-ray: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
