"""`eqdp-ray report`: four plots and a Markdown/HTML page about a study, from the results store alone.

Why a static page: tuning runs on a cluster, results are read on a laptop; PNGs plus one
HTML file can be opened, attached or committed without a server. Plots are drawn with
matplotlib's Agg canvas on private ``Figure`` objects (no pyplot global state), so building
a report from a notebook or a thread does not disturb the caller's figures.

Parameter importances reuse Optuna's own estimator: the stored trials are turned back into
an ``optuna.Study`` (``study_from_trials``) and fed to ``optuna.importance``. Where that is
not meaningful (too few trials or parameters) or fails, a plain, labelled fallback is drawn.

Every plot degrades on its own: missing columns, NaNs or a single trial skip that plot with
a note on the page instead of failing the report.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eqdp_ray.results.export import format_cell, plural
from eqdp_ray.results.query import (
    PS_SEARCHER_ONLY,
    NoResults,
    as_store,
    best_only_studies,
    best_per_epsilon,
    covered_rows,
    group_label,
    model_name,
    pareto_front,
    rankable,
    search_privacy_statements,
    summary_view,
    trial_order,
)
from eqdp_ray.results.schema import RANKABLE_STATUSES, config_from_row, flatten_config, is_missing
from eqdp_ray.results.store import ResultsStore

METRIC = "best_val_accuracy"

#: Plot key -> file name. Keys are what ``Report.images`` / ``Report.notes`` use.
PLOTS: dict[str, str] = {
    "history": "optimization_history.png",
    "pareto": "accuracy_vs_params.png",
    "epsilon": "accuracy_vs_epsilon.png",
    "importance": "param_importances.png",
}
TITLES: dict[str, str] = {
    "history": "Optimisation history",
    "pareto": "Accuracy against model size (Pareto front)",
    "epsilon": "Accuracy against epsilon",
    "importance": "Parameter importances",
}

ADAPTIVE_SENTENCE = (
    "Adaptive searches (TPE, ASHA) are not covered by a search-level bound: each trial's epsilon "
    "holds for that trial, but choosing and releasing the best trial of an adaptive search leaks "
    "more than one trial's epsilon."
)

NO_RANKED = "No finished trial has a validation accuracy."

#: Why the trial-by-trial plots leave a Papernot-Steinke study out by default.
BEST_ONLY_NOTE = (
    "a Papernot-Steinke study shows only its best trial, the one output its bound covers; its other trials and "
    "their number are not covered (`eqdp-ray report --all-trials` shows them, for the searcher only)"
)

#: Config keys that differ between trials without being hyperparameters.
NOT_HYPERPARAMETERS: frozenset[str] = frozenset(
    {"name", "device", "data.root", "data.download", "privacy.secret_seed",
     "training.physical_batch_size", "training.eval_batch_size"}
)  # fmt: skip
#: Numbers with at most this many distinct values, some repeated, are treated as choices.
MAX_CATEGORIES = 6

TOP_COLUMNS = (
    "rank", "study", "trial_id", "status", "model", "group", METRIC, "test_accuracy", "epsilon",
    "target_epsilon", "delta", "sigma", "sample_rate", "steps", "num_params",
)  # fmt: skip


class CannotPlot(Exception):
    """These trials cannot make this plot (too few, values missing); the message goes on the page.

    Not a ``ValueError``: it is an expected outcome that ``build_report`` turns into a note,
    not an input error.
    """


@dataclass
class Importances:
    """Parameter importances and how they were obtained (``method`` names the estimator)."""

    values: dict[str, float]
    method: str  # "optuna-fanova" or "fallback-spread"
    note: str
    n_trials: int
    left_out: list[str] = field(default_factory=list)

    @property
    def from_optuna(self) -> bool:
        return self.method.startswith("optuna")


@dataclass
class Report:
    """What ``build_report`` wrote. ``images[key]`` is None for a skipped plot, explained in ``notes[key]``."""

    out_dir: Path
    markdown: Path
    html: Path
    images: dict[str, Path | None]
    notes: dict[str, str]
    importances: Importances | None
    top: pd.DataFrame
    #: Papernot-Steinke studies reduced to their best trial (the default), and those shown in full (``all_trials``).
    best_only: tuple[str, ...] = ()
    searcher_only: tuple[str, ...] = ()


# ------------------------------------------------------------------------------ entry point


def build_report(
    store: ResultsStore | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    study: str | None = None,
    top: int = 5,
    all_trials: bool = False,
) -> Report:
    """Write the four plots, ``report.md`` and ``index.html`` for ``study`` (or every study).

    The accuracy-against-epsilon plot always spans every study of the store (a privacy/
    utility curve compares studies); the chosen study is marked on it. Raises ``NoResults``
    for an empty store or study, ``ResultsStoreError`` for an unknown study.

    A report is a document people share, so of a Papernot-Steinke study (``query.best_only_studies``) it shows
    only what the study's bound covers: its best trial, without its number of trials. ``all_trials`` shows the
    rest, and the page then says, at its top, that it is NOT covered: for the searcher only.
    """
    from eqdp_ray.config.paths import check_output_dir

    check_output_dir(out_dir, flag="--out")  # a file or an unwritable place: said before any plot is drawn
    store = as_store(store)
    if not store.studies():
        raise NoResults(f"the results store {store.uri} holds no trials")
    trials = store.read_trials(study)
    if trials.empty:
        raise NoResults(f"study {study!r} has no readable trials" if study else f"{store.uri} holds no readable trials")
    every = store.read_trials() if study is not None else trials
    ps_studies = tuple(sorted(best_only_studies(trials)))
    hidden: set[str] = set()
    if not all_trials and ps_studies:
        hidden = set(ps_studies)
        trials, every = covered_rows(trials), covered_rows(every)
        if trials.empty:
            raise NoResults(
                f"{', '.join(ps_studies)}: no finished trial with a validation accuracy, so the search has no output "
                "to report (how many trials ran is not covered by its Papernot-Steinke bound and is not shown)"
            )
    # the trial-by-trial views (history, importances, counts) leave out the studies reduced to their best trial
    searched = trials[~trials["study"].astype(str).isin(hidden)] if hidden else trials

    studies = sorted(trials["study"].astype(str).unique())
    hidden &= set(studies)  # a best-only study without a finished trial has no output: it is not on the page
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, Path | None] = {}
    notes: dict[str, str] = {}
    importances: Importances | None = None

    def draw(key: str, fn: Callable[[Path], str]) -> None:
        path = out / PLOTS[key]
        try:
            notes[key] = fn(path)
            images[key] = path
        except CannotPlot as exc:
            notes[key] = str(exc)
            images[key] = None
        except Exception as exc:  # one odd column must not cost the whole report
            notes[key] = f"could not be drawn ({type(exc).__name__}: {exc})"
            images[key] = None
        if images[key] is None and path.exists():
            path.unlink()  # a stale plot of an earlier report would contradict the note

    def importance_plot(path: Path) -> str:
        nonlocal importances
        if searched.empty:
            raise CannotPlot(f"not drawn: {BEST_ONLY_NOTE}")
        subset = _importance_trials(searched, study)
        importances = param_importances(subset)
        plot_importances(importances, path)
        if study is None and len(studies) > 1:
            chosen = subset["study"].astype(str).iloc[0]
            return f"Study {chosen} (the one with most finished trials): {importances.note}"
        return importances.note

    def history_plot(path: Path) -> str:
        if searched.empty:
            raise CannotPlot(f"not drawn: {BEST_ONLY_NOTE}")
        return plot_history(searched, path) + _left_out(hidden)

    draw("history", history_plot)
    draw("pareto", lambda p: plot_pareto(trials, p, best_only=sorted(hidden)))
    draw("epsilon", lambda p: plot_epsilon(every, p, highlight=study))
    draw("importance", importance_plot)
    if hidden and images.get("importance") is not None:
        notes["importance"] += _left_out(hidden)

    top_df = _top(trials, top)
    report = Report(
        out,
        out / "report.md",
        out / "index.html",
        images,
        notes,
        importances,
        top_df,
        best_only=tuple(sorted(hidden)),
        searcher_only=ps_studies if all_trials else (),
    )
    page = _page_data(store, trials, searched, study, report)
    report.markdown.write_text(render_markdown(page))
    report.html.write_text(render_html(page))
    return report


def _left_out(hidden: set[str]) -> str:
    return f" Left out: {', '.join(sorted(hidden))}: {BEST_ONLY_NOTE}." if hidden else ""


def _top(trials: pd.DataFrame, top: int) -> pd.DataFrame:
    """The ``top`` trials as ``best`` ranks them (same order and tie-breaks)."""
    ranked = rankable(trials, METRIC).copy()
    if ranked.empty:
        return ranked
    ranked["study"] = ranked["study"].astype(str)
    ranked = ranked.sort_values([METRIC, "study", "trial_id"], ascending=[False, True, True], kind="mergesort")
    ranked = ranked.head(top).reset_index(drop=True)
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    return ranked


def _importance_trials(trials: pd.DataFrame, study: str | None) -> pd.DataFrame:
    """Importances describe one search space: the chosen study, else the one with most ranked trials."""
    if study is not None:
        return trials
    ranked = rankable(trials, METRIC)
    if ranked.empty:
        return ranked
    counts = ranked["study"].astype(str).value_counts()
    biggest = sorted(counts.index[counts == counts.max()])[0]
    return trials[trials["study"].astype(str) == biggest]


# ------------------------------------------------------------------------------ figures


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")


def _finish(fig: Any, ax: Any, path: Path, *, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, grid and legend every scatter plot of the report shares, then the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _save(fig, path)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _numeric(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[column], errors="coerce").astype(float)


def _maybe_log(ax: Any, values: Sequence[float], axis: str = "x") -> None:
    finite = [v for v in values if np.isfinite(v) and v > 0]
    if finite and max(finite) / min(finite) >= 10:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def plot_history(trials: pd.DataFrame, path: Path) -> str:
    """Validation accuracy of each trial in the order trials started, and the running best."""
    values = _numeric(trials, METRIC)
    if not np.isfinite(values).any():
        raise CannotPlot(f"no trial has a {METRIC} value")
    fig = _figure()
    ax = fig.add_subplot()
    studies = sorted(trials["study"].astype(str).unique())
    colors = _colors(len(studies))
    for color, name in zip(colors, studies):
        ordered = trial_order(trials[trials["study"].astype(str) == name])
        acc = _numeric(ordered, METRIC).to_numpy()
        x = np.arange(1, len(ordered) + 1)
        ok = ordered["status"].astype(str).isin(RANKABLE_STATUSES).to_numpy() & np.isfinite(acc)
        label = name if len(studies) > 1 else "trial"
        ax.scatter(x[ok], acc[ok], color=color, s=22, label=label, zorder=3)
        other = ~ok & np.isfinite(acc)  # running / failed trials with a partial value
        if other.any():
            ax.scatter(
                x[other],
                acc[other],
                facecolors="none",
                edgecolors=color,
                s=22,
                zorder=3,
                label=f"{label} (not finished)" if len(studies) > 1 else "not finished",
            )
        running = pd.Series(np.where(ok, acc, np.nan)).cummax().ffill().to_numpy()
        ax.step(
            x,
            running,
            where="post",
            color=color,
            alpha=0.8,
            label=f"{name}: running best" if len(studies) > 1 else "running best",
        )
    _finish(fig, ax, path, xlabel="trial (in start order)", ylabel="validation accuracy", title="Optimisation history")
    n = int(np.isfinite(values).sum())
    verb = "has" if n == 1 else "have"
    return f"{n} of {plural(len(trials), 'trial')} {verb} a validation accuracy; the line is the best finished trial so far."


def plot_pareto(trials: pd.DataFrame, path: Path, best_only: Sequence[str] = ()) -> str:
    """Accuracy against trainable parameters, coloured by model, with the Pareto front.

    ``best_only``: studies reduced to their best trial; the note does not count them as trials."""
    ranked = rankable(trials, METRIC)
    params = _numeric(ranked, "num_params")
    ranked, params = ranked[np.isfinite(params)], params[np.isfinite(params)]
    if ranked.empty:
        raise CannotPlot("no finished trial has both a validation accuracy and a parameter count")
    models = [model_name(r) or "unknown" for r in ranked.to_dict("records")]
    front = pareto_front(ranked, [("num_params", "min"), (METRIC, "max")])
    fig = _figure()
    ax = fig.add_subplot()
    names = sorted(set(models))
    for color, name in zip(_colors(len(names)), names):
        mask = np.array([m == name for m in models])
        ax.scatter(params[mask], _numeric(ranked, METRIC)[mask], color=color, s=26, label=name, zorder=3)
    fx, fy = _numeric(front, "num_params").to_numpy(), _numeric(front, METRIC).to_numpy()
    ax.step(fx, fy, where="post", color="black", linewidth=1.2, zorder=2, label="Pareto front")
    ax.scatter(fx, fy, s=90, facecolors="none", edgecolors="black", linewidths=1.4, zorder=4)
    for row, x, y in zip(front.to_dict("records"), fx, fy):
        label = group_label(row)
        if label:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    _maybe_log(ax, params.tolist())
    _finish(
        fig,
        ax,
        path,
        xlabel="trainable parameters",
        ylabel="best validation accuracy",
        title="Accuracy against model size",
    )
    ids = ", ".join(str(t) for t in front["trial_id"])
    if not best_only:
        return f"{plural(len(ranked), 'finished trial')}; Pareto front (max accuracy, min parameters): {ids}."
    counted = int((~ranked["study"].astype(str).isin(best_only)).sum())
    shown = (
        f"{plural(counted, 'finished trial')} and " if counted else ""
    ) + f"the best trial of {', '.join(best_only)}"
    return (
        f"{shown}; Pareto front (max accuracy, min parameters): {ids}. {BEST_ONLY_NOTE[0].upper()}{BEST_ONLY_NOTE[1:]}."
    )


def plot_epsilon(trials: pd.DataFrame, path: Path, highlight: str | None = None) -> str:
    """Best validation accuracy per (study, target epsilon) across studies: the privacy/utility curve."""
    points = best_per_epsilon(trials, METRIC)
    if points.empty:
        raise CannotPlot("no finished trial has both a validation accuracy and an epsilon")
    fig = _figure()
    ax = fig.add_subplot()
    studies = sorted(points["study"].unique())
    for color, name in zip(_colors(len(studies)), studies):
        mine = points[points["study"] == name]
        marker = "*" if name == highlight else "o"
        ax.scatter(
            mine["target_epsilon"],
            mine[METRIC],
            color=color,
            marker=marker,
            s=120 if marker == "*" else 36,
            label=name,
            zorder=3,
        )
        test = _numeric(mine, "test_accuracy")
        if np.isfinite(test).any():
            ax.scatter(mine["target_epsilon"], test, facecolors="none", edgecolors=color, marker="s", s=30, zorder=3)
    envelope = points.groupby("target_epsilon")[METRIC].max().sort_index()
    if len(envelope) > 1:
        ax.plot(envelope.index, envelope.values, color="gray", linestyle="--", linewidth=1, label="best per epsilon")
    _maybe_log(ax, points["target_epsilon"].tolist())
    _finish(
        fig,
        ax,
        path,
        xlabel="target epsilon (per trial)",
        ylabel="accuracy (filled: validation, hollow squares: test)",
        title="Accuracy against epsilon",
    )
    return (
        f"best trial of each (study, target epsilon): {_count(len(points), 'point')} "
        f"from {_count(len(studies), 'study')}" + (f"; study {highlight!r} is starred" if highlight else "") + "."
    )


def plot_importances(importances: Importances, path: Path) -> None:
    """Horizontal bars, most important on top; the title says which estimator made them."""
    items = sorted(importances.values.items(), key=lambda kv: kv[1])
    fig = _figure(7.0, max(2.5, 0.45 * len(items) + 1.5))
    ax = fig.add_subplot()
    color = "tab:blue" if importances.from_optuna else "tab:gray"
    ax.barh([k for k, _ in items], [v for _, v in items], color=color)
    if importances.from_optuna:
        ax.set_xlabel("importance (Optuna fANOVA, normalised to sum 1)")
        ax.set_title(f"Parameter importances ({plural(importances.n_trials, 'trial')})")
    else:
        ax.set_xlabel("spread of mean validation accuracy across the parameter's values")
        ax.set_title(f"Fallback (not fANOVA): accuracy spread ({plural(importances.n_trials, 'trial')})")
    ax.grid(alpha=0.3, axis="x")
    _save(fig, path)


# ------------------------------------------------------------------------------ importances


def _leaf(value: Any) -> Any:
    """A config leaf as an Optuna-storable scalar (lists/dicts as JSON text); None if absent."""
    if is_missing(value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def trial_params(trials: pd.DataFrame) -> list[dict[str, Any]]:
    """Each row's config as flat ``{"training.lr": 0.5, ...}`` (exact types, from ``config_json``)."""
    out = []
    for row in trials.to_dict("records"):
        flat = flatten_config(config_from_row(row), prefix="")
        params = {k: _leaf(v) for k, v in flat.items() if k not in NOT_HYPERPARAMETERS}
        out.append({k: v for k, v in params.items() if v is not None})
    return out


def infer_distributions(params: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Optuna distributions for the config keys whose values vary between trials.

    Strings, bools, mixed types and numbers with few repeated values (a grid such as batch
    sizes 64/128/256) become ``CategoricalDistribution``; other numbers span the observed
    min..max as ``IntDistribution``/``FloatDistribution`` (log scale over a 10x range).
    Keys that look like identifiers (a distinct string per trial) are left out.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    columns: dict[str, list[Any]] = {}
    for p in params:
        for key, value in p.items():
            columns.setdefault(key, []).append(value)
    out: dict[str, Any] = {}
    for key in sorted(columns):
        values = columns[key]
        distinct = list(dict.fromkeys(values))
        if len(distinct) < 2:
            continue
        kinds = {type(v) for v in values}
        numeric = kinds <= {int, float}
        if not numeric:
            if kinds == {str} and len(distinct) == len(values) and len(values) >= 3:
                continue  # an identifier, not a choice
            choices = distinct if len(kinds) == 1 else list(dict.fromkeys(str(v) for v in values))
            out[key] = CategoricalDistribution(sorted(choices, key=lambda v: (str(type(v)), v)))
            continue
        if len(distinct) <= MAX_CATEGORIES and len(distinct) < len(values):
            if float in kinds:
                distinct = sorted({float(v) for v in values})
            out[key] = CategoricalDistribution(sorted(distinct))
            continue
        low, high = min(values), max(values)
        log = low > 0 and high / low >= 10
        if kinds == {int}:
            out[key] = IntDistribution(int(low), int(high), log=log and low >= 1)
        else:
            out[key] = FloatDistribution(float(low), float(high), log=log)
    return out


def _in_distribution(value: Any, dist: Any) -> Any:
    """``value`` converted to what ``dist`` holds (e.g. str for mixed choices, float for 1)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(dist, CategoricalDistribution):
        if value in dist.choices and type(value) in {type(c) for c in dist.choices}:
            return value
        if isinstance(value, (int, float)) and float(value) in dist.choices:
            return float(value)
        return str(value)
    if isinstance(dist, FloatDistribution):
        return float(value)
    return value


def study_from_trials(trials: pd.DataFrame, metric: str = METRIC) -> tuple[Any, dict[str, Any]]:
    """An in-memory ``optuna.Study`` holding the finished trials (value = ``metric``).

    Returns the study and the inferred distributions; only keys that vary are parameters.
    """
    import optuna

    ranked = rankable(trials, metric)
    params = trial_params(ranked)
    distributions = infer_distributions(params)
    study = optuna.create_study(direction="maximize", study_name="eqdp-ray-report")
    for p, value in zip(params, _numeric(ranked, metric)):
        own = {k: _in_distribution(v, distributions[k]) for k, v in p.items() if k in distributions}
        study.add_trial(
            optuna.trial.create_trial(params=own, distributions={k: distributions[k] for k in own}, value=float(value))
        )
    return study, distributions


def param_importances(trials: pd.DataFrame, metric: str = METRIC) -> Importances:
    """Importances of the varying config keys for ``metric``: Optuna's fANOVA, or a labelled fallback.

    fANOVA (a random forest over the trials) needs at least 3 finished trials and 2 varying
    parameters to say anything; it considers only parameters every trial has (conditional
    ones, such as a group that only equivariant models take, are left out and listed). The
    fallback is the spread of mean accuracy across each parameter's values (numbers with many
    values split at the median): crude, model-free, and labelled as such.
    """
    import optuna

    ranked = rankable(trials, metric)
    n = len(ranked)
    if n < 2:
        raise CannotPlot(f"needs at least 2 finished trials with a {metric} value, found {n}")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study, distributions = study_from_trials(ranked, metric)
            if not distributions:
                raise CannotPlot("no config key varies between the finished trials")
            reason = None
            if n < 3 or len(distributions) < 2:
                reason = (
                    f"{_count(n, 'trial')} and {_count(len(distributions), 'varying parameter')} are too few "
                    "for fANOVA (it needs 3 and 2)"
                )
            else:
                try:
                    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
                    values = optuna.importance.get_param_importances(study, evaluator=evaluator)
                    values = {k: float(v) for k, v in values.items() if np.isfinite(v)}
                    if values:
                        left_out = sorted(set(distributions) - set(values))
                        note = (
                            f"Optuna fANOVA importances over {plural(n, 'finished trial')} (study rebuilt from the store)."
                            + (f" Left out (not set in every trial): {', '.join(left_out)}." if left_out else "")
                        )
                        return Importances(values, "optuna-fanova", note, n, left_out)
                    reason = "Optuna returned no importances (no parameter is set in every trial)"
                except Exception as exc:  # e.g. scikit-learn missing, degenerate data
                    reason = f"Optuna's fANOVA failed ({type(exc).__name__}: {exc})"
    finally:
        optuna.logging.set_verbosity(verbosity)
    values = _spread(ranked, metric, list(distributions))
    note = f"Fallback, not fANOVA: {reason}. Bars show the spread of mean accuracy across each parameter's values."
    return Importances(values, "fallback-spread", note, n)


def _spread(ranked: pd.DataFrame, metric: str, keys: Sequence[str]) -> dict[str, float]:
    params = trial_params(ranked)
    acc = _numeric(ranked, metric).to_numpy()
    out: dict[str, float] = {}
    for key in keys:
        values = [p.get(key) for p in params]
        present = [(v, a) for v, a in zip(values, acc) if v is not None]
        groups: dict[Any, list[float]] = {}
        numbers = [v for v, _ in present if isinstance(v, (int, float)) and not isinstance(v, bool)]
        many = len(numbers) == len(present) and len(set(numbers)) > MAX_CATEGORIES
        median = float(np.median(numbers)) if many else 0.0
        for v, a in present:
            group = ("high" if v > median else "low") if many else json.dumps(v, default=str)
            groups.setdefault(group, []).append(float(a))
        if len(values) != len(present):
            groups.setdefault("(unset)", []).extend(float(a) for v, a in zip(values, acc) if v is None)
        means = [float(np.mean(g)) for g in groups.values() if g]
        out[key] = max(means) - min(means) if len(means) >= 2 else 0.0
    return out


# ------------------------------------------------------------------------------ page


def _page_data(
    store: ResultsStore, trials: pd.DataFrame, searched: pd.DataFrame, study: str | None, report: Report
) -> dict[str, Any]:
    """`searched`: the trials whose number may be stated (all but the best-only studies' best trials)."""
    counts = searched["status"].astype(str).value_counts().sort_index()
    studies = sorted(trials["study"].astype(str).unique())
    title = f"eqdp-ray report: study {study}" if study else f"eqdp-ray report: {_count(len(studies), 'study')}"
    coverage = [
        f"Study {name}: a Papernot-Steinke search. This report shows only its best trial (its configuration, score "
        "and model), the one output its bound covers; its number of trials and its other trials are not covered and "
        "are not shown."
        for name in report.best_only
    ]
    banner = None
    if report.searcher_only:
        title += " (NOT covered: for the searcher only)"
        banner = (
            f"{PS_SEARCHER_ONLY}. This report shows every trial of the Papernot-Steinke "
            f"{'study' if len(report.searcher_only) == 1 else 'studies'} {', '.join(report.searcher_only)} and how "
            "many ran; the search's bound covers only the best trial's configuration, score and model. Share the "
            "report made without --all-trials."
        )
    return {
        "title": title,
        "banner": banner,
        "coverage": coverage,
        "store": store.uri,
        "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "studies": studies,
        "counts": ", ".join(f"{n} {s}" for s, n in counts.items()),
        "n_trials": len(searched),
        "trials_line": _trials_line(len(searched), counts, report.best_only),
        "top": summary_view(report.top, TOP_COLUMNS) if not report.top.empty else None,
        "privacy": _privacy_lines(trials) + search_privacy_statements(store, trials),
        "images": {k: (p.name if p else None) for k, p in report.images.items()},
        "notes": report.notes,
        "importances": report.importances,
    }


def _trials_line(n: int, counts: pd.Series, best_only: Sequence[str]) -> str:
    """ "N trials (statuses)", never counting a best-only study's trials (their number is not covered)."""
    listed = f"{plural(n, 'trial')} ({', '.join(f'{k} {s}' for s, k in counts.items())})" if n else ""
    if not best_only:
        return listed
    best = f"the best trial of {', '.join(best_only)}"
    return f"{listed} and {best}" if listed else best


def _privacy_lines(trials: pd.DataFrame) -> list[str]:
    """Per-trial and search-level privacy statements, per study, from what the rows recorded."""
    from eqdp_ray.privacy import format_epsilon  # lazily: the results layer loads without torch

    lines = []
    scoped = False
    for name in sorted(trials["study"].astype(str).unique()):
        rows = trials[trials["study"].astype(str) == name]
        if "budget_scope" in rows.columns and (rows["budget_scope"].astype(str) == "search").any():
            scoped = True
            continue  # one (epsilon, delta) for the whole search: search_privacy_statements says it
        targets = sorted({float(v) for v in _numeric(rows, "target_epsilon") if np.isfinite(v)})
        deltas = sorted({float(v) for v in _numeric(rows, "delta") if np.isfinite(v)})
        spent = _numeric(rows, "epsilon")
        finished = spent[rows["status"].astype(str).isin(RANKABLE_STATUSES)]
        parts = [f"Study {name}: each trial is differentially private on its own"]
        if targets:
            parts.append(f"with target epsilon {', '.join(format_epsilon(t) for t in targets)}")
        if deltas:
            parts.append(f"(delta {', '.join(f'{d:g}' for d in deltas)})")
        if np.isfinite(finished).any():
            low, high = np.nanmin(finished), np.nanmax(finished)
            low, high = format_epsilon(low), format_epsilon(high)
            spread = low if low == high else f"{low} to {high}"
            parts.append(f"; epsilon spent by finished trials: {spread}")
        line = " ".join(parts).replace(" ;", ";") + "."
        # no search-level claim outside scope `search`, whatever an older row's search_epsilon says: these trials
        # released exact scores, which a Papernot-Steinke bound (best trial's output only) does not cover
        mode = rows["search_mode"].dropna().astype(str).unique() if "search_mode" in rows.columns else []
        how = f" (search mode: {', '.join(sorted(mode))})" if len(mode) else ""
        line += f" No search-level epsilon covers this study{how}: its trials released exact scores."
        lines.append(line)
    if lines or not scoped:
        lines.append(ADAPTIVE_SENTENCE)
    return lines


def _count(n: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n} {noun if n == 1 else plural}"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown_table(df: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = [
        "| " + " | ".join(_md_escape(format_cell(c, v)) for c, v in zip(df.columns, row)) + " |"
        for row in df.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows])


def _text(value: str) -> str:
    """HTML text-node escaping (quotes stay readable; attributes use ``html.escape``)."""
    return html.escape(value, quote=False)


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{_text(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_text(format_cell(c, v))}</td>" for c, v in zip(df.columns, row)) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _importance_frame(importances: Importances | None) -> pd.DataFrame | None:
    if importances is None or not importances.values:
        return None
    items = sorted(importances.values.items(), key=lambda kv: -kv[1])
    return pd.DataFrame(items, columns=["parameter", "importance" if importances.from_optuna else "accuracy spread"])


def render_markdown(page: Mapping[str, Any]) -> str:
    """``report.md``: the same content as the HTML page, readable as text and on GitHub."""
    out = [f"# {page['title']}", ""]
    if page.get("banner"):
        out += [f"> **{page['banner']}**", ""]
    out.append(
        f"Store `{page['store']}`; {page['trials_line']}; "
        f"studies: {', '.join(page['studies'])}. Generated {page['generated']}."
    )
    out += [f"\n{line}" for line in page.get("coverage", [])]
    out += ["", "## Best trials (by validation accuracy)", ""]
    out.append(_markdown_table(page["top"]) if page["top"] is not None else NO_RANKED)
    out += ["", "Test accuracy is recorded, never used to select.", "", "## Privacy", ""]
    if page.get("banner"):
        out += [f"- **{page['banner']}**"]
    out += [f"- {line}" for line in page["privacy"]]
    for key, title in TITLES.items():
        out += ["", f"## {title}", ""]
        image = page["images"].get(key)
        if image:
            out += [f"![{title}]({image})", ""]
            out.append(page["notes"].get(key, ""))
        else:
            out.append(f"_Plot skipped: {page['notes'].get(key, 'not drawn')}_")
        if key == "importance":
            frame = _importance_frame(page["importances"])
            if frame is not None:
                out += ["", _markdown_table(frame)]
    return "\n".join(out) + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #555; font-size: 0.9em; }
.skipped { color: #a33; }
.not-covered { border: 3px solid #b00; background: #fee; color: #700; padding: 0.6em 1em; font-weight: bold; }
"""


def render_html(page: Mapping[str, Any]) -> str:
    """``index.html``: one self-contained page (styles inline) next to the PNGs."""
    esc, attr = _text, html.escape
    parts = [
        "<!DOCTYPE html>",
        "<html><head><meta charset='utf-8'>",
        f"<title>{esc(page['title'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{esc(page['title'])}</h1>",
        *([f"<p class='not-covered'>{esc(page['banner'])}</p>"] if page.get("banner") else []),
        f"<p>Store <code>{esc(page['store'])}</code>; {esc(page['trials_line'])}; "
        f"studies: {esc(', '.join(page['studies']))}. Generated {esc(page['generated'])}.</p>",
        *[f"<p>{esc(line)}</p>" for line in page.get("coverage", [])],
        "<h2>Best trials (by validation accuracy)</h2>",
        _html_table(page["top"]) if page["top"] is not None else f"<p>{NO_RANKED}</p>",
        "<p class='note'>Test accuracy is recorded, never used to select.</p>",
        "<h2>Privacy</h2><ul>",
        *([f"<li class='not-covered'>{esc(page['banner'])}</li>"] if page.get("banner") else []),
        *[f"<li>{esc(line)}</li>" for line in page["privacy"]],
        "</ul>",
    ]
    for key, title in TITLES.items():
        parts.append(f"<h2>{esc(title)}</h2>")
        image = page["images"].get(key)
        if image:
            parts.append(f"<img src='{attr(image)}' alt='{attr(title)}'>")
            parts.append(f"<p class='note'>{esc(page['notes'].get(key, ''))}</p>")
        else:
            parts.append(f"<p class='skipped'>Plot skipped: {esc(page['notes'].get(key, 'not drawn'))}</p>")
        if key == "importance":
            frame = _importance_frame(page["importances"])
            if frame is not None:
                parts.append(_html_table(frame))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
