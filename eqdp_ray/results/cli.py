"""`eqdp-ray best / results / report`: parse, call `eqdp_ray.results.query` / `.report`, print.

Imported by eqdp_ray.cli at start-up for every command, so nothing heavy (pandas, pyarrow,
matplotlib) is imported at module level.

Exit codes: 0 with output; 1 when the store (or the filtered part of it) has no results;
2 for input the user must fix (raised as `eqdp_ray.config.errors.UserError` subclasses, printed by eqdp_ray.cli).
Files of the store that could not be read are listed on stderr, one line each, and never
stop the command: a stray file should not hide a week of tuning results. Temporary files that
killed writers left behind get one note line; neither kind is ever modified or deleted.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from typing import Any

from eqdp_ray.config.storage import DEFAULT_STORE_URI

STATUS_CHOICES = ("completed", "stopped_early", "failed", "running")  # = eqdp_ray.results.STATUSES


def _run(args: argparse.Namespace, body: Callable[[Any], int]) -> int:
    """Open the store, run ``body(store)``, report skipped files, map "no results" to exit 1."""
    from eqdp_ray.results import ResultsStore, ResultsStoreError, SkippedFileWarning
    from eqdp_ray.results.query import NoResults

    try:
        store = ResultsStore(args.store)
    except OSError as exc:  # e.g. an s3:// store without credentials
        raise ResultsStoreError(f"cannot open the results store {args.store}: {exc}") from None
    store.check_location()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkippedFileWarning)  # reported below, one line each
            return body(store)
    except NoResults as exc:
        print(f"eqdp-ray: no results: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # unreachable store, missing credentials, an output path that changed under us
        raise ResultsStoreError(_os_error_text(exc)) from None
    finally:
        for skipped in store.skipped_files:
            print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
        _note_leftovers(store.leftover_temp_files)


def _os_error_text(exc: OSError) -> str:
    """The path and what is wrong with it, in words, instead of Python's "[Errno 21] ...: 'path'"."""
    if exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}; fix that path (or pass another one) and run again"
    return str(exc)  # pyarrow's errors of remote stores say what failed in their own words


def _note_leftovers(paths: list[str]) -> None:
    """One line for the temporary files of killed writers: not read, not deleted (the user decides)."""
    if not paths:
        return
    from eqdp_ray.results.export import plural

    one = len(paths) == 1
    what = plural(len(paths), "temporary file") + (
        " left by an interrupted write" if one else " left by interrupted writes"
    )
    where = sorted(paths)[0] if one else f"e.g. {sorted(paths)[0]}"
    print(
        f"[eqdp-ray] note: not read: {what} ({where}); {'its' if one else 'their'} rows were never recorded, and "
        f"{'it' if one else 'they'} can be deleted once no eqdp-ray process writes to this store",
        file=sys.stderr,
    )


def _print(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _print_privacy(lines: list[str], fmt: str) -> None:
    """What the study's epsilon covers, on stderr after a table (json/csv carry it in the budget_scope and search_epsilon
    columns and stay machine-readable)."""
    if fmt != "table":
        return
    for line in lines:
        print(f"[eqdp-ray] privacy: {line}", file=sys.stderr)


def _print_searcher_only(studies: set[str], what: str) -> None:
    """One line per Papernot-Steinke study: what was just shown of it is not covered (said in every format)."""
    from eqdp_ray.results.query import PS_SEARCHER_ONLY

    for study in sorted(studies):
        print(
            f"[eqdp-ray] privacy: {study}: {what} {PS_SEARCHER_ONLY} (its Papernot-Steinke bound covers the best "
            "trial's configuration, score and model only)",
            file=sys.stderr,
        )


def cmd_best(args: argparse.Namespace) -> int:
    from eqdp_ray.results import export
    from eqdp_ray.results.export import plural
    from eqdp_ray.results.query import (
        BEST_COLUMNS,
        best_configs,
        beyond_best,
        check_config_path,
        search_privacy_statements,
        summary_view,
        write_config,
    )

    def body(store: Any) -> int:
        top = best_configs(
            store,
            study=args.study,
            epsilon=args.epsilon,
            metric=args.metric,
            top=args.top or 5,
            mode=args.mode,
            covered_only=args.top is None,  # by default a Papernot-Steinke study shows only its best trial
        )
        if args.format == "table":
            _print(export(summary_view(top, BEST_COLUMNS), "table"))
        else:
            _print(export(top, args.format))
        _print_privacy(search_privacy_statements(store, top), args.format)
        for study, extra in beyond_best(top).items():  # asked for with --top: said on stderr in every format
            print(
                f"[eqdp-ray] privacy: {study}: the {plural(extra, 'row')} after its best trial "
                f"{'is' if extra == 1 else 'are'} NOT covered by its "
                "Papernot-Steinke bound (it covers the best trial's configuration, score and model only): do not "
                "release them",
                file=sys.stderr,
            )
        if args.emit_config:
            winner = top.iloc[0]
            emitted = write_config(winner, args.emit_config, force=args.force)
            note = f"; dropped keys unknown to the run config: {', '.join(emitted.dropped)}" if emitted.dropped else ""
            print(
                f"[eqdp-ray] wrote the config of trial {winner['trial_id']} (study {winner['study']}) to "
                f"{emitted.path} with privacy.secret_seed: null{note}; run it with `eqdp-ray train {emitted.path}`",
                file=sys.stderr,
            )
        return 0

    if args.emit_config:
        check_config_path(args.emit_config, args.force)  # before the query: say it now, not after the table
    return _run(args, body)


def cmd_results(args: argparse.Namespace) -> int:
    from eqdp_ray.results import export
    from eqdp_ray.results.query import (
        STUDY_LIST_COLUMNS,
        TRIAL_LIST_COLUMNS,
        best_only_in_store,
        best_only_studies,
        list_results,
        search_privacy_statements,
        summary_view,
    )

    def body(store: Any) -> int:
        df = list_results(store, study=args.study, status=args.status, epsilon=args.epsilon)
        if args.format != "table":
            _print(export(df, args.format))
        elif args.study is None:
            _print(export(summary_view(df, STUDY_LIST_COLUMNS), "table"))
        else:
            _print(export(summary_view(df, TRIAL_LIST_COLUMNS), "table"))
        if args.study is not None:
            _print_privacy(search_privacy_statements(store, df), args.format)
            _print_searcher_only(best_only_studies(df), "these rows and their number are")
        else:
            _print_searcher_only(best_only_in_store(store, df["study"].astype(str)), "its trial counts are")
        return 0

    return _run(args, body)


def cmd_report(args: argparse.Namespace) -> int:
    from eqdp_ray.results.report import build_report

    def body(store: Any) -> int:
        report = build_report(store, args.out, study=args.study, all_trials=args.all_trials)
        for name, path in report.images.items():
            print(f"[eqdp-ray] {name}: {path}" if path else f"[eqdp-ray] {name}: skipped ({report.notes[name]})")
        print(f"[eqdp-ray] report: {report.html} (and {report.markdown})")
        for study in report.best_only:
            print(
                f"[eqdp-ray] privacy: {study}: a Papernot-Steinke study: the report shows only its best trial, the one "
                "output its bound covers (--all-trials adds the rest, for the searcher only)",
                file=sys.stderr,
            )
        _print_searcher_only(set(report.searcher_only), "the report's trials beyond the best and their number are")
        return 0

    return _run(args, body)


def _epsilon(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"epsilon must be a positive finite number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        default=DEFAULT_STORE_URI,
        help=f"results store: local path or s3://, gs:// URI (default {DEFAULT_STORE_URI})",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `best`, `results` and `report` to the top-level parser (called by eqdp_ray.cli)."""
    formats = ("table", "json", "csv")

    p = subparsers.add_parser("best", help="the best trials in the results store, and a config")
    _store_arg(p)
    p.add_argument("--study", default=None, help="only this study (default: all studies)")
    p.add_argument(
        "--epsilon",
        type=_epsilon,
        default=None,
        help="only trials run for this target epsilon (exact match: budgets are a grid)",
    )
    p.add_argument(
        "--metric",
        default="val_accuracy",
        help="rank by this numeric column (default val_accuracy = best_val_accuracy)",
    )
    p.add_argument(
        "--mode",
        choices=("max", "min"),
        default=None,
        help="max or min of the metric (default: min for epsilon/time/size, max otherwise)",
    )
    p.add_argument(
        "--top",
        type=_positive_int,
        default=None,
        help="how many trials to show (default 5, and only the best of a Papernot-Steinke study, the one output "
        "its bound covers)",
    )
    p.add_argument(
        "--format",
        choices=formats,
        default="table",
        help="table (readable columns) or json/csv (full rows, config included)",
    )
    p.add_argument(
        "--emit-config",
        default=None,
        metavar="PATH",
        help="write the winner's config as YAML for `eqdp-ray train PATH` (secret seed left null); an existing "
        "file is refused unless --force",
    )
    p.add_argument("--force", action="store_true", help="with --emit-config: replace an existing file")
    p.set_defaults(handler=cmd_best)

    p = subparsers.add_parser("results", help="list the studies in the store, or one's trials")
    _store_arg(p)
    p.add_argument("--study", default=None, help="list this study's trials (default: list the studies)")
    p.add_argument("--status", choices=STATUS_CHOICES, default=None, help="only trials with this status")
    p.add_argument("--epsilon", type=_epsilon, default=None, help="only trials run for this target epsilon")
    p.add_argument("--format", choices=formats, default="table", help="table, json or csv (full rows)")
    p.set_defaults(handler=cmd_results)

    p = subparsers.add_parser("report", help="plots and a Markdown/HTML report of the results")
    _store_arg(p)
    p.add_argument("--study", default=None, help="report on this study (default: every study in the store)")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument(
        "--all-trials",
        action="store_true",
        help="of a Papernot-Steinke study, show every trial and their number, not only the best trial its bound "
        "covers; the page is then marked NOT covered: for the searcher only, do not publish",
    )
    p.set_defaults(handler=cmd_report)
