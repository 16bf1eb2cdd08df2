"""Questions asked of the results store: the best configurations, listings, the winner as a run config.

This is the Python API behind ``eqdp-ray best`` / ``eqdp-ray results`` (and the data side of
``eqdp-ray report``): the CLI only parses arguments and prints what these functions return,
so a notebook gets exactly what the terminal shows. Functions accept a ``ResultsStore`` or a
store URI, so one-off questions need no set-up.

"No results" is not an input error: it raises ``NoResults`` (a ``LookupError``, so the CLI can
exit 1 for it and 2 for bad arguments, which are ``ResultsStoreError``/``ValueError``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eqdp_ray.results.errors import ResultsStoreError
from eqdp_ray.results.export import plural
from eqdp_ray.results.schema import METRIC_ALIASES, RANKABLE_STATUSES, config_from_row, is_missing
from eqdp_ray.results.store import ResultsStore

#: Metrics where smaller is better: ``best`` ranks them ascending unless told otherwise.
COST_METRICS: tuple[str, ...] = ("epsilon", "wall_time_s", "device_seconds", "num_params", "sigma", "steps")

#: Columns of the readable ``best`` table (json/csv get full rows instead).
BEST_COLUMNS: tuple[str, ...] = (
    "rank", "study", "trial_id", "status", "model", "group", "best_val_accuracy", "test_accuracy",
    "epsilon", "target_epsilon", "search_epsilon", "budget_scope", "sigma", "sample_rate", "steps", "num_params",
    "wall_time_s",
)  # fmt: skip
#: Columns of the readable per-trial listing of one study.
TRIAL_LIST_COLUMNS: tuple[str, ...] = (
    "trial_id", "status", "model", "group", "best_val_accuracy", "test_accuracy", "epsilon",
    "trial_search_epsilon", "target_epsilon", "search_epsilon", "sigma", "sample_rate", "steps", "num_params",
    "wall_time_s", "finished_at", "error",
)  # fmt: skip
#: Columns a readable view shows only when some row has a value: why a trial failed or was refused
#: (``eqdp_ray.tune`` records it in the row's free-form ``error`` column).
SPARSE_COLUMNS: frozenset[str] = frozenset({"error"})
#: Columns of the readable study listing.
STUDY_LIST_COLUMNS: tuple[str, ...] = (
    "study", "n_trials", "n_completed", "n_stopped_early", "n_failed", "n_running",
    "best_val_accuracy", "target_epsilons", "last_finished_at",
)  # fmt: skip

#: Integer columns that pandas turns into floats when some rows lack them; shown as integers.
INT_COLUMNS: frozenset[str] = frozenset(
    {"rank", "steps", "num_params", "n_trials", "n_completed", "n_stopped_early", "n_failed", "n_running"}
)


class NoResults(LookupError):
    """The store (or the filtered part of it) holds nothing to show.

    Not a ``ValueError``: the request was valid, the answer is empty, and scripts want to
    tell the two apart (the CLI exits 1 here, 2 for bad input).
    """


def as_store(store: ResultsStore | str | os.PathLike[str]) -> ResultsStore:
    """A ``ResultsStore`` for a store or a URI, so every API call accepts either."""
    return store if isinstance(store, ResultsStore) else ResultsStore(store)


def default_mode(metric: str) -> str:
    """``"min"`` for cost-like metrics (epsilon, time, size), ``"max"`` for accuracies."""
    column = METRIC_ALIASES.get(metric, metric)
    return "min" if column in COST_METRICS else "max"


# ------------------------------------------------------------------------------ best


def best_configs(
    store: ResultsStore | str | os.PathLike[str],
    study: str | None = None,
    epsilon: float | None = None,
    metric: str = "val_accuracy",
    top: int | None = 5,
    mode: str | None = None,
    covered_only: bool = False,
) -> pd.DataFrame:
    """The ``top`` ranked trials (full rows, leading ``rank`` column), best first.

    ``covered_only``: of a Papernot-Steinke study (``best_only_studies``) keep only its best trial, the one
    output its bound covers, before taking the ``top`` (ranks renumbered, so they reveal nothing of the rest).

    Raises ``NoResults`` with a message that says what was searched and what exists (an
    empty store, or no finished trial matching the filters), and ``ResultsStoreError`` for
    an unknown metric or study. The metric is validated even on an empty store, so a typo
    is reported as a typo, not as "no results".
    """
    store = as_store(store)
    mode = mode or default_mode(metric)
    if not store.studies():
        store.best(metric=metric, top=1, mode=mode)  # validates the metric (raises if unknown)
        raise NoResults(f"the results store {store.uri} holds no trials")
    top_df = store.best(study=study, epsilon=epsilon, metric=metric, top=None if covered_only else top, mode=mode)
    if top_df.empty:
        raise NoResults(_explain_empty(store, study, epsilon, metric))
    if covered_only:
        studies = best_only_studies(top_df)
        names = top_df["study"].astype(str)
        keep = ~names.isin(studies) | ~names.duplicated()
        top_df = top_df[keep.to_numpy()].head(top) if top is not None else top_df[keep.to_numpy()]
        top_df = top_df.reset_index(drop=True)
        top_df["rank"] = np.arange(1, len(top_df) + 1, dtype=np.int64)
    return top_df


def _explain_empty(store: ResultsStore, study: str | None, epsilon: float | None, metric: str) -> str:
    column = METRIC_ALIASES.get(metric, metric)
    where = f"study {study!r}" if study else f"the store {store.uri}"
    parts = [f"no {' or '.join(RANKABLE_STATUSES)} trial with a value for {column} in {where}"]
    if epsilon is not None:
        parts.append(f"with target_epsilon={epsilon:g}")
    try:
        trials = store.read_trials(study)
    except ResultsStoreError:
        trials = pd.DataFrame(columns=["study", "status", "target_epsilon"])
    # a Papernot-Steinke study's number of trials and their statuses are not covered by its bound: never stated
    hidden = best_only_studies(trials)
    shown = trials[~trials["study"].astype(str).isin(hidden)] if hidden else trials
    if trials.empty:
        parts.append("(it holds no readable trials)")
    else:
        if not shown.empty:
            counts = shown["status"].astype(str).value_counts().sort_index()
            parts.append("(trials there: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")")
        if hidden:
            parts.append(
                f"({', '.join(sorted(hidden))}: Papernot-Steinke, so how many trials ran and their statuses are not "
                "shown: its bound does not cover them)"
            )
        targets = sorted({float(t) for t in trials["target_epsilon"] if not is_missing(t)})
        if epsilon is not None and targets:
            parts.append("target epsilons present: " + ", ".join(f"{t:g}" for t in targets))
    return " ".join(parts)


# ------------------------------------------------------------------------------ listings


def list_results(
    store: ResultsStore | str | os.PathLike[str],
    study: str | None = None,
    status: str | Sequence[str] | None = None,
    epsilon: float | None = None,
) -> pd.DataFrame:
    """Without ``study``: one summary row per study (``list_studies``); with it: its trials.

    Filters: ``status`` and ``epsilon`` (the trial's ``target_epsilon``, as in ``best``).
    For the study listing they select the studies that have at least one matching trial;
    the counts shown stay those of the whole study, so nothing is silently re-scoped.
    Raises ``NoResults`` when nothing matches.
    """
    store = as_store(store)
    if study is None:
        studies = store.list_studies()
        if studies.empty:
            raise NoResults(f"the results store {store.uri} holds no trials")
        if status is not None or epsilon is not None:
            matching = store.read_trials(status=status, epsilon=epsilon, columns=["study"])
            keep = set(matching["study"].astype(str))
            studies = studies[studies["study"].astype(str).isin(keep)].reset_index(drop=True)
            if studies.empty:
                raise NoResults(f"no study in {store.uri} has trials matching {_filters(status, epsilon)}")
        return studies
    trials = store.read_trials(study, status=status, epsilon=epsilon)
    if trials.empty:
        what = f" matching {_filters(status, epsilon)}" if status is not None or epsilon is not None else ""
        raise NoResults(f"study {study!r} has no trials{what}")
    return trials


def _filters(status: str | Sequence[str] | None, epsilon: float | None) -> str:
    parts = []
    if status is not None:
        parts.append("status=" + (status if isinstance(status, str) else ",".join(status)))
    if epsilon is not None:
        parts.append(f"target_epsilon={epsilon:g}")
    return " and ".join(parts)


# ------------------------------------------------------------------------------ views


def model_name(row: Mapping[str, Any] | pd.Series) -> str | None:
    """``config.model.name`` of a row, or None."""
    model = config_from_row(row).get("model")
    name = model.get("name") if isinstance(model, Mapping) else None
    return None if is_missing(name) else str(name)


def group_label(row: Mapping[str, Any] | pd.Series) -> str | None:
    """Symmetry group of a trial's model, e.g. ``"D4"``, ``"C8"``, ``"D4->D2"``; None if not equivariant.

    Prefers the ``group`` column that a trial writes from the model registry (``""`` for a
    model without one). Rows written without it (older versions, foreign rows) get it from the
    same registry, which knows the defaults the config left implicit (``restrict: halved``);
    the registry, and escnn with it, is imported only then.
    """
    recorded = row.get("group") if hasattr(row, "get") else None
    if isinstance(recorded, str):
        return recorded or None
    model = config_from_row(row).get("model")
    if not isinstance(model, Mapping) or is_missing(model.get("name")):
        return None
    options = model.get("options")
    options = dict(options) if isinstance(options, Mapping) else {}
    from eqdp_ray.models import describe_group

    try:
        return describe_group(str(model["name"]), **options)
    except (ValueError, TypeError, KeyError):  # a foreign or invalid model: no label rather than a crash
        return None


def summary_view(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The readable subset of a results frame: derived ``model``/``group`` plus ``columns``.

    Columns that are absent are left out, and ``group`` and the ``SPARSE_COLUMNS`` (``error``) only
    appear when some row has one, so a table of baselines, or of trials that all ran, carries no empty column.
    """
    view = pd.DataFrame(index=df.index)
    records = df.to_dict("records")
    for column in columns:
        if column == "model":
            view["model"] = [model_name(r) for r in records]
        elif column == "group":
            groups = [group_label(r) for r in records]
            if any(g is not None for g in groups):
                view["group"] = groups
        elif column in df.columns:
            series = df[column]
            if column in SPARSE_COLUMNS and not any(not is_missing(v) and v != "" for v in series):
                continue
            if isinstance(series.dtype, pd.CategoricalDtype):
                series = series.astype(str)
            elif column in INT_COLUMNS and pd.api.types.is_float_dtype(series):
                finite = series.dropna()
                if (finite == finite.round()).all():
                    series = series.astype("Int64")
            view[column] = series
    return view.reset_index(drop=True)


# ------------------------------------------------------------------------------ emit config


@dataclass(frozen=True)
class EmittedConfig:
    """What ``write_config`` wrote: the path, the validated config and the keys it dropped."""

    path: Path
    config: dict[str, Any]
    dropped: tuple[str, ...]


def _run_config_keys() -> dict[str, Any]:
    """Nested map of the keys ``RunConfig`` knows; ``None`` marks a free-form leaf or dict."""
    from eqdp_ray.config import config_keys

    tree: dict[str, Any] = {}
    for dotted in config_keys():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = None
    return tree


def _prune(config: Mapping[str, Any], known: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, Any], list[str]]:
    """Drop keys the run config does not know (tune-only extras); report them as dotted paths."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if key not in known:
            dropped.append(path)
        elif known[key] is not None and isinstance(value, Mapping):
            kept[key], sub = _prune(value, known[key], path + ".")
            dropped += sub
        else:
            kept[key] = value
    return kept, dropped


def _plain(value: Any) -> Any:
    """YAML-safe Python values (tuples -> lists, numpy -> Python), so safe_dump never fails."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _emit(row: Mapping[str, Any] | pd.Series) -> tuple[dict[str, Any], list[str]]:
    from eqdp_ray.config import ConfigError, config_to_dict, parse_config

    config = config_from_row(row)
    pruned, dropped = _prune(config, _run_config_keys())
    privacy = pruned.get("privacy")
    pruned["privacy"] = dict(privacy) if isinstance(privacy, Mapping) else {}
    # The trial's seed (if it had a fixed one) made its noise known to anyone holding the
    # config: a run from the emitted file must draw a fresh secret seed.
    pruned["privacy"]["secret_seed"] = None
    try:
        parsed = parse_config(_plain(pruned))
    except ConfigError as exc:
        who = f"trial {row.get('trial_id')!r} of study {row.get('study')!r}"
        raise ResultsStoreError(f"the config of {who} is not a valid run config: {exc}") from None
    return _plain(config_to_dict(parsed)), dropped


def emit_config(row: Mapping[str, Any] | pd.Series) -> dict[str, Any]:
    """The trial's config as a validated, complete run config dict (``eqdp-ray train`` input).

    Keys the run config does not know (search-only extras) are dropped, defaults are filled
    in (so the file pins every setting), and ``privacy.secret_seed`` is always null: a fixed
    seed would make the noise of the new run predictable. Raises ``ResultsStoreError`` when
    the stored config cannot be a run config.
    """
    return _emit(row)[0]


#: The flag that names ``write_config``'s path on the command line (its errors say what to pass there).
EMIT_CONFIG_FLAG = "--emit-config"


def check_config_path(path: str | os.PathLike[str], force: bool = False) -> None:
    """Fail before any work when ``path`` cannot take the emitted config: a directory, an existing file
    (unless ``force``: a config someone edited is not replaced silently), or an unwritable place."""
    from eqdp_ray.config.paths import check_output_file

    check_output_file(path, EMIT_CONFIG_FLAG, overwrite=force)


def write_config(
    row: Mapping[str, Any] | pd.Series, path: str | os.PathLike[str], force: bool = False
) -> EmittedConfig:
    """Write ``emit_config(row)`` as YAML (with a provenance comment) that ``eqdp-ray train`` accepts.

    Refuses an existing ``path`` unless ``force`` (``check_config_path``), and writes through a temporary
    file and a rename, so the path holds the old file or the whole new one, even after a kill.
    """
    import yaml

    from eqdp_ray.config.paths import write_text_atomic

    check_config_path(path, force)
    config, dropped = _emit(row)
    dumper = _dumper()
    target = Path(path)
    header = [
        f"# Config of trial {row.get('trial_id')} of study {row.get('study')}, written by `eqdp-ray best`.",
        f"# best_val_accuracy={_fmt(row.get('best_val_accuracy'))} test_accuracy={_fmt(row.get('test_accuracy'))} "
        f"epsilon={_fmt_epsilon(row.get('epsilon'))} "
        f"(target {_fmt_epsilon(row.get('target_epsilon'))}, delta {_fmt(row.get('delta'))})",
        "# privacy.secret_seed is null: a fresh secret seed is drawn for the new run, so its noise is private.",
        "# Training it again is a new release on the same data: its epsilon adds to the study's (see docs/PRIVACY.md).",
    ]
    if dropped:
        header.append(f"# dropped keys unknown to the run config: {', '.join(dropped)}")
    text = "\n".join(header) + "\n" + yaml.dump(config, Dumper=dumper, sort_keys=False)
    write_text_atomic(target, text)
    return EmittedConfig(target, config, tuple(dropped))


def _dumper() -> type:
    import yaml

    class Dumper(yaml.SafeDumper):
        """Block mappings, inline lists: reads like the hand-written configs in configs/."""

    Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
    return Dumper


def _fmt(value: Any) -> str:
    if is_missing(value):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


def _fmt_epsilon(value: Any) -> str:
    """An epsilon rounded up (eqdp_ray.privacy.format_epsilon): a comment never claims more privacy than spent."""
    if is_missing(value) or not isinstance(value, (int, float, np.number)):
        return _fmt(value)
    from eqdp_ray.privacy import format_epsilon

    return format_epsilon(float(value))


# ------------------------------------------------------------------------------ analysis


def rankable(trials: pd.DataFrame, metric: str = "best_val_accuracy") -> pd.DataFrame:
    """Trials ``best`` would rank: completed/stopped_early with a finite metric value."""
    if trials.empty or metric not in trials.columns or "status" not in trials.columns:
        return trials.iloc[0:0]
    values = pd.to_numeric(trials[metric], errors="coerce")
    mask = trials["status"].astype(str).isin(RANKABLE_STATUSES) & np.isfinite(values)
    return trials[mask]


def pareto_front(
    trials: pd.DataFrame,
    objectives: Sequence[tuple[str, str]] = (("num_params", "min"), ("best_val_accuracy", "max")),
) -> pd.DataFrame:
    """Rows that no other row dominates (at least as good on every objective, better on one).

    ``objectives`` are ``(column, "max" | "min")`` pairs; the default is the accuracy/size
    trade-off. Rows missing a value are ignored. Sorted best first on the first objective,
    then on the next ones, so a front over (``num_params`` min, accuracy max) is a step line.
    """
    if trials.empty or any(column not in trials.columns for column, _ in objectives):
        return trials.iloc[0:0]
    sign = {"max": 1.0, "min": -1.0}
    scores = np.column_stack(
        [
            sign[mode] * pd.to_numeric(trials[column], errors="coerce").to_numpy(dtype=float)
            for column, mode in objectives
        ]
    )
    usable = np.isfinite(scores).all(axis=1)
    rows, scores = trials[usable], scores[usable]
    dominated = np.array([bool(((scores >= s).all(axis=1) & (scores > s).any(axis=1)).any()) for s in scores], bool)
    rows, scores = rows[~dominated], scores[~dominated]
    order = np.lexsort([-scores[:, i] for i in reversed(range(scores.shape[1]))])
    return rows.iloc[order]


def best_per_epsilon(trials: pd.DataFrame, metric: str = "best_val_accuracy") -> pd.DataFrame:
    """The best rankable trial of each (study, target_epsilon): one point of a privacy/utility curve.

    Trials without a target epsilon are grouped under the epsilon they spent, so foreign
    rows still show up. Columns: study, target_epsilon, the metric, test_accuracy, epsilon,
    trial_id, sorted by target_epsilon then study.
    """
    ranked = rankable(trials, metric)
    if ranked.empty or "study" not in ranked.columns:
        return pd.DataFrame(columns=["study", "target_epsilon", metric, "test_accuracy", "epsilon", "trial_id"])
    ranked = ranked.copy()
    target = pd.to_numeric(ranked.get("target_epsilon"), errors="coerce")
    spent = pd.to_numeric(ranked.get("epsilon"), errors="coerce")
    ranked["target_epsilon"] = target.where(np.isfinite(target), spent)
    ranked = ranked[np.isfinite(ranked["target_epsilon"])]
    ranked["study"] = ranked["study"].astype(str)
    ranked["__score"] = pd.to_numeric(ranked[metric], errors="coerce")
    ranked = ranked.sort_values(["__score", "trial_id"], ascending=[False, True], kind="mergesort")
    best = ranked.groupby(["study", "target_epsilon"], sort=False).head(1)
    cols = [c for c in ["study", "target_epsilon", metric, "test_accuracy", "epsilon", "trial_id"] if c in best.columns]
    return best.sort_values(["target_epsilon", "study"], kind="mergesort")[cols].reset_index(drop=True)


def trial_order(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials in the order they ran: by start time, then finish/write time, then id."""
    if trials.empty:
        return trials
    keys = [c for c in ("started_at", "finished_at", "written_at", "trial_id") if c in trials.columns]
    return trials.sort_values(keys, na_position="last", kind="mergesort").reset_index(drop=True)


#: What a Papernot-Steinke bound leaves out (the same words as `eqdp_ray.tune.budget`, which results may not import).
PS_NOT_COVERED = (
    "NOT covered, so do not release them: the other trials' rows and scores, the number of trials or attempts, and "
    "the trial logs"
)


def best_only_studies(rows: pd.DataFrame) -> set[str]:
    """Studies of `rows` run in scope `search` with a random count of trials (Papernot-Steinke): their bound
    covers only the best trial's configuration, score and model, so only that trial may be shown."""
    if rows.empty or not {"study", "budget_scope", "search_mode"} <= set(rows.columns):
        return set()
    mask = (rows["budget_scope"].astype(str) == "search") & (rows["search_mode"].astype(str) == "random_count")
    return set(rows.loc[mask, "study"].astype(str))


def covered_rows(rows: pd.DataFrame, metric: str = "best_val_accuracy") -> pd.DataFrame:
    """The rows whose release their study's bound covers: every row of an ordinary study, and of a
    Papernot-Steinke study (``best_only_studies``) only its best rankable trial (ranked as ``best`` ranks: the
    metric, then trial_id), or nothing when it has none."""
    studies = best_only_studies(rows)
    if not studies:
        return rows
    rows = rows.reset_index(drop=True)
    names = rows["study"].astype(str)
    ranked = rankable(rows[names.isin(studies)], metric)
    ranked = ranked.assign(__score=pd.to_numeric(ranked[metric], errors="coerce"), __study=names[ranked.index])
    ranked = ranked.sort_values(["__score", "trial_id"], ascending=[False, True], kind="mergesort")
    best = ranked.groupby("__study", sort=False).head(1).index
    keep = ~names.isin(studies) | rows.index.isin(best)
    return rows[keep.to_numpy()].reset_index(drop=True)


def best_only_in_store(store: ResultsStore, studies: Sequence[str] | None = None) -> set[str]:
    """``best_only_studies`` of the whole store (or of ``studies``), read from the few columns that say it."""
    columns = ["study", "budget_scope", "search_mode"]
    try:
        rows = store.read_trials(columns=columns)
    except ResultsStoreError:  # rows written before scopes or random counts existed: none is best-only
        return set()
    found = best_only_studies(rows)
    return found if studies is None else found & {str(s) for s in studies}


#: Said of what a Papernot-Steinke study shows beyond its best trial (`results`, `report --all-trials`).
PS_SEARCHER_ONLY = "NOT covered by the search's epsilon: for the searcher only, do not publish"


def beyond_best(ranked: pd.DataFrame) -> dict[str, int]:
    """For each best-only study in the ranked `ranked`, how many of its rows come after its best one."""
    studies = best_only_studies(ranked)
    if not studies:
        return {}
    names = ranked["study"].astype(str)
    return {s: int((names == s).sum()) - 1 for s in sorted(studies) if int((names == s).sum()) > 1}


TRIAL_SCOPE_STATEMENT = (
    "budget scope trial: each trial alone is ({eps}, {delta})-DP, but the search as a whole, and so the best model "
    "you release, is NOT covered by a search-level bound"
)


def search_privacy_statements(store: Any, rows: pd.DataFrame) -> list[str]:
    """One sentence per study in `rows`: what its recorded (epsilon, delta) covers.

    Scope `search`: the study's guarantee (the budget of its ledger's plan), the method, and the
    composition of its trials as the ledger counts them (`privacy.search.SearchLedger`). Scope `trial`
    (and rows written before scopes existed): the per-trial budget and, in words, that the released
    model is not covered.
    """
    import json

    from eqdp_ray.privacy import format_epsilon
    from eqdp_ray.privacy.search import PAPERNOT_STEINKE, SearchLedger, SearchPlan

    out = []
    if rows.empty or "study" not in rows.columns:
        return out
    for name in sorted(rows["study"].astype(str).unique()):
        mine = rows[rows["study"].astype(str) == name]
        scope = mine["budget_scope"].dropna().astype(str).unique() if "budget_scope" in mine.columns else []
        if "search" not in scope:
            eps = ", ".join(format_epsilon(v) for v in sorted(mine["target_epsilon"].dropna().unique()))
            delta = ", ".join(f"{v:g}" for v in sorted(mine["delta"].dropna().unique()))
            # no Papernot-Steinke bound either, even for a random count (and whatever an older row's search_epsilon
            # says): every trial here released its exact scores and training metrics, the bound assumes it did not
            out.append(f"{name}: " + TRIAL_SCOPE_STATEMENT.format(eps=eps or "?", delta=delta or "?"))
            continue
        events = store.read_ledger(name).to_dict("records")
        plans = [e["plan_json"] for e in events if e.get("event") == "plan" and isinstance(e.get("plan_json"), str)]
        if not plans:
            out.append(f"{name}: budget scope search, but its ledger is missing from this store")
            continue
        plan = SearchPlan.from_dict(json.loads(plans[0]))
        ledger = SearchLedger.from_events(plan, events)
        if plan.method == PAPERNOT_STEINKE:  # the count of attempts and their composition are not covered
            out.append(
                f"{name}: search-level ({format_epsilon(plan.epsilon)}, {plan.delta:.3g})-DP for the best trial's configuration, "
                f"score and model only (target {format_epsilon(plan.target_epsilon)}; Papernot-Steinke, best of a secret random "
                f"number of trials); {PS_NOT_COVERED}; each trial at most {format_epsilon(plan.trial_epsilon)}"
            )
            continue
        method = "adaptive composition"
        out.append(
            f"{name}: search-level ({format_epsilon(plan.epsilon)}, {plan.delta:.3g})-DP for the whole search and "
            f"the model it releases (target {format_epsilon(plan.target_epsilon)}; {method}); "
            f"{plural(len(ledger.entries), 'trial attempt')} in the ledger, their composition as they ran: "
            f"epsilon {format_epsilon(ledger.epsilon_spent())}; each trial at most {format_epsilon(plan.trial_epsilon)}"
        )
    return out
