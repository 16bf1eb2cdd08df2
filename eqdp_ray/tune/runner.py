"""Run a search: Ray Tune's Tuner with Optuna (define-by-run) and ASHA, resumable, results in the store.

The experiment directory is `<storage>/<study>`; `storage` defaults to `<store>/experiments`,
so a study's Parquet rows and its Ray Tune state (checkpoints, searcher state) live side by
side. Next to Tune's files we keep `eqdp-study.json`: the space as it was parsed, the store
it writes to, and (random-count searches) the number of trials that was drawn and the privacy
of the search. `--resume` refuses to continue a study whose space or store has changed.
"""

from __future__ import annotations

import json
import math
import os
import random
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eqdp_ray.config import SpaceError
from eqdp_ray.config.space import CONDITION_DEFAULTS, SearchSpace, TrialCount, load_space
from eqdp_ray.privacy.selection import SearchPrivacy, count_distribution, search_privacy
from eqdp_ray.train.cluster import ClusterError, check_writable, connect_ray
from eqdp_ray.tune.feasibility import SpaceCheck, check_space, privacy_candidates, train_size_of

STUDY_FILE = "eqdp-study.json"
ADAPTIVE_NOTE = (
    "privacy of the search: each trial spent at most epsilon={eps} (delta={delta}), but this search ({how}) has "
    "no search-level bound: the Papernot-Steinke bound covers only random search with a random number of trials "
    "and no early stopping; adaptive searches (TPE, ASHA) are NOT covered by it. Releasing the best trial leaks "
    "more than one trial's epsilon. For a search-level guarantee use sampler: random with num_samples: "
    "{{distribution: truncated_negative_binomial, mean: ...}}; see docs/SEARCH_SPACES.md."
)


class DefineByRun:
    """Optuna define-by-run space: suggests each searched key whose conditions hold, in order.

    A class rather than a closure so that Tune can pickle it with the searcher's state.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: Any) -> None:
        values: dict[str, Any] = dict(CONDITION_DEFAULTS)
        values.update(self.space.fixed)
        for key, dist in self.space.search.items():
            if dist.active(values):
                values[key] = dist.suggest(trial, key)
        return None


@dataclass
class SearchSummary:
    """What a finished (or interrupted) search leaves behind, for the CLI and for Python callers."""

    study: str
    store: str
    experiment_path: str
    num_trials: int
    status_counts: dict[str, int]
    top: list[dict[str, Any]]
    pareto: list[dict[str, Any]] = field(default_factory=list)
    search_privacy: SearchPrivacy | None = None
    privacy_note: str = ""
    check: SpaceCheck | None = None


def default_storage(store: str) -> str:
    """Tune's experiment storage when --storage is not given: `<store>/experiments` (absolute if local)."""
    if "://" in store:
        return store.rstrip("/") + "/experiments"
    return str(Path(store).expanduser().resolve() / "experiments")


def _fs(path: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def _read_study_file(experiment: str) -> dict[str, Any] | None:
    import pyarrow.fs as pafs

    fs, path = _fs(experiment)
    target = f"{path}/{STUDY_FILE}"
    if fs.get_file_info(target).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(target) as f:
        return json.loads(f.read().decode())


def _write_study_file(experiment: str, data: dict[str, Any]) -> None:
    fs, path = _fs(experiment)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{STUDY_FILE}") as f:
        f.write(json.dumps(data, indent=2, default=str).encode())


def _make_sampler(space: SearchSpace) -> Any:
    import optuna

    s = space.sampler
    seed = s.seed
    if s.type == "random":
        if seed is None:  # random search: the candidates must not be predictable either
            seed = secrets.randbits(32)
        return optuna.samplers.RandomSampler(seed=seed)
    kwargs: dict[str, Any] = {"seed": seed, "multivariate": s.multivariate}
    if s.multivariate and any(d.when for d in space.search.values()):
        kwargs["group"] = True  # conditional spaces: multivariate TPE per group of co-occurring keys
    if s.n_startup_trials is not None:
        kwargs["n_startup_trials"] = s.n_startup_trials
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(**kwargs)


def make_searcher(space: SearchSpace) -> Any:
    from ray.tune.search.optuna import OptunaSearch

    metric: Any = space.metrics if space.multi_objective else space.metrics[0]
    mode: Any = space.modes if space.multi_objective else space.modes[0]
    return OptunaSearch(
        space=DefineByRun(space), metric=metric, mode=mode, sampler=_make_sampler(space), study_name=space.study
    )


def make_scheduler(space: SearchSpace) -> Any:
    if space.scheduler.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    s = space.scheduler
    return ASHAScheduler(
        time_attr=s.time_attr,
        metric="val_accuracy",
        mode="max",
        max_t=s.max_t,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


def trial_dirname(trial: Any) -> str:
    """Short trial directories (Tune's default spells out every parameter)."""
    return f"trial_{trial.trial_id}"


def trial_resources(space: SearchSpace) -> dict[str, float]:
    """One worker: the trial is the worker. Several: the trial only launches a TorchTrainer, which
    reserves the workers' CPUs and GPUs itself, so the trial holds no CPU (or it could deadlock);
    Tune needs a non-empty request, so it asks for a little (logical) memory instead."""
    r = space.resources
    if r.workers == 1:
        return {"cpu": r.cpus_per_worker, "gpu": r.gpus_per_worker}
    return {"cpu": 0, "memory": 64 * 1024**2}


def plan_search_privacy(space: SearchSpace, train_size: int) -> SearchPrivacy:
    """Papernot-Steinke (epsilon, delta) of a random-count search over this space."""
    from eqdp_ray.privacy import PrivacyBudgetError, plan_privacy

    assert isinstance(space.num_samples, TrialCount)
    candidates = privacy_candidates(space, train_size)
    if candidates is None:
        raise SpaceError(
            f"{space.source + ': ' if space.source else ''}a random-count search needs one RDP curve that bounds "
            "every trial, so the searched batch size / sample rate and steps / epochs must take finitely many "
            "values (categorical, or int ranges) with at most 64 combinations; use categorical choices"
        )
    p = space.privacy
    triples = []
    for q, steps in candidates:
        try:
            plan = plan_privacy(float(p["target_epsilon"]), float(p["delta"]), q, steps, str(p["accountant"]))
        except PrivacyBudgetError:
            continue  # such a trial stops before touching the data: it costs nothing
        triples.append((plan.noise_multiplier, q, steps))
    count = space.num_samples
    return search_privacy(count.distribution, count.mean, triples, float(p["delta"]), eta=count.eta)


def _draw_trials(space: SearchSpace) -> int:
    count = space.num_samples
    assert isinstance(count, TrialCount)
    dist = count_distribution(count.distribution, count.mean, count.eta)
    rng = random.Random(space.sampler.seed) if space.sampler.seed is not None else None  # None: OS CSPRNG
    return dist.sample(rng)


def _connect(address: str | None, space: SearchSpace) -> bool:
    """Attach to a cluster (`address`) or start a local Ray; True if we started it (and must stop it)."""
    r = space.resources
    cpus = max(os.cpu_count() or 1, math.ceil(r.workers * r.cpus_per_worker))
    try:
        return connect_ray(address, num_cpus=cpus, include_dashboard=False)
    except ClusterError as exc:
        raise SpaceError(str(exc)) from None


def _check_cluster(space: SearchSpace) -> None:
    import ray

    r = space.resources
    have = ray.cluster_resources()
    need_cpu, need_gpu = r.workers * r.cpus_per_worker, r.workers * r.gpus_per_worker
    if have.get("CPU", 0) < need_cpu or have.get("GPU", 0) < need_gpu:
        raise SpaceError(
            f"one trial needs {need_cpu:g} CPUs and {need_gpu:g} GPUs (resources: {r.workers} workers x "
            f"{r.cpus_per_worker:g} CPU, {r.gpus_per_worker:g} GPU) but the cluster has "
            f"{have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs; lower the resources block or "
            "add nodes"
        )


def run_search(
    space: str | Path | Mapping[str, Any] | SearchSpace,
    *,
    store: str = "./eqdp-results",
    address: str | None = None,
    resume: bool = False,
    storage_path: str | None = None,
    overrides: Iterable[str] = (),
    log: Callable[[str], None] = print,
    checkpoint_every_s: float = 30.0,
) -> SearchSummary:
    """Validate the space, then run (or resume) its study; every trial lands in the results store.

    `checkpoint_every_s`: least wall time between a trial's checkpoints (what `--resume` restarts from).
    """
    from ray import tune

    from eqdp_ray.results import ResultsStore
    from eqdp_ray.tune.trial import StoreCallback, StudyContext, run_trial

    space = load_space(space, overrides)
    train_size = train_size_of(space)
    check = check_space(space, train_size)
    for warning in check.warnings:
        log(f"[eqdp-ray] warning: {warning}")
    storage = storage_path or default_storage(store)
    experiment = f"{storage.rstrip('/')}/{space.study}"
    store_uri = store if "://" in store else str(Path(store).expanduser().resolve())
    for uri, what, flag in ((store_uri, "results store", "--store"), (storage, "experiment storage", "--storage")):
        try:
            check_writable(uri, what=what, flag=flag)
        except ClusterError as exc:
            raise SpaceError(str(exc)) from None
    saved = _read_study_file(experiment)

    if resume:
        if saved is None or not tune.Tuner.can_restore(experiment):
            raise SpaceError(
                f"nothing to resume: no study '{space.study}' at {experiment} (run it without --resume "
                "first, or pass the --storage it used)"
            )
        if _comparable(saved.get("space")) != _comparable(space.to_dict()):
            raise SpaceError(
                f"the space of study '{space.study}' changed since it started ({experiment}); resume it "
                "with the same file and --set overrides, or start a new study name"
            )
        if saved.get("store") != store_uri:
            raise SpaceError(
                f"study '{space.study}' writes to the store {saved.get('store')}; resume it with "
                f"--store {saved.get('store')}"
            )
    elif saved is not None or tune.Tuner.can_restore(experiment):
        raise SpaceError(
            f"study '{space.study}' already has an experiment at {experiment}; pass --resume to "
            "continue it, or choose another study name (e.g. --set study=NEW)"
        )

    privacy: SearchPrivacy | None = None
    if space.private_selection:
        privacy = plan_search_privacy(space, train_size)
        num_trials = int(saved["num_trials"]) if resume else _draw_trials(space)
        seeded = space.sampler.seed is not None
        note = privacy.describe() + (
            " The sampler seed is fixed: the number of trials and the candidates are "
            "predictable, so this run is reproducible but NOT private."
            if seeded
            else ""
        )
    else:
        num_trials = int(space.num_samples)  # type: ignore[arg-type]
        how = ["adaptive TPE sampler" if space.sampler.type == "tpe" else "a fixed number of random trials"]
        if space.scheduler.type == "asha":
            how.append("adaptive ASHA early stopping")
        note = ADAPTIVE_NOTE.format(
            how=", ".join(how), eps=space.privacy["target_epsilon"], delta=space.privacy["delta"]
        )
    if not resume:
        _write_study_file(
            experiment,
            {
                "space": space.to_dict(),
                "store": store_uri,
                "num_trials": num_trials,
                "search_epsilon": privacy.epsilon if privacy else None,
                "search_delta": privacy.delta if privacy else None,
            },
        )
    log(
        f"[eqdp-ray] study '{space.study}': {len(space.search)} searched keys, {check.points_checked} sampled "
        f"configs checked, {train_size} training examples; experiment at {experiment}"
    )
    log(f"[eqdp-ray] {note}")

    search_epsilon = privacy.epsilon if privacy else None
    if resume and saved.get("search_epsilon") is not None:
        search_epsilon = float(saved["search_epsilon"])  # every row of a study carries the same number
    ctx = StudyContext(
        space=space,
        store_uri=store_uri,
        train_size=train_size,
        storage_path=storage,
        search_epsilon=search_epsilon,
        search_delta=privacy.delta if privacy else None,
        checkpoint_every_s=checkpoint_every_s,
    )
    if num_trials == 0:
        log(
            "[eqdp-ray] the secret draw gave K=0 trials: the search ends without output, as the bound assumes. "
            "Running it again is a second search whose privacy adds up."
        )
        return _summarize(space, ctx, experiment, privacy, note, check)

    started_ray = _connect(address, space)
    try:
        if started_ray and not address:
            _check_cluster(space)  # a cluster may autoscale: only a local Ray is known to be final
        trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_resources(space))
        if resume:
            tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=make_searcher(space),
                    scheduler=make_scheduler(space),
                    num_samples=num_trials,
                    max_concurrent_trials=space.max_concurrent,
                    trial_dirname_creator=trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=space.study,
                    storage_path=storage,
                    callbacks=[StoreCallback(ctx)],
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            )
        tuner.fit()
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    ResultsStore(store_uri).compact(space.study)
    return _summarize(space, ctx, experiment, privacy, note, check)


def _comparable(space: Any) -> Any:
    """The parsed space as JSON data, minus where it was read from (the same file may be given by another path)."""
    data = json.loads(json.dumps(space, default=str)) if space is not None else None
    if isinstance(data, dict):
        data.pop("source", None)
    return data


def pareto_front(rows: list[dict[str, Any]], objectives: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Rows not dominated by any other (at least as good on every objective, better on one)."""

    def better_or_equal(a: dict[str, Any], b: dict[str, Any]) -> tuple[bool, bool]:
        ge, gt = True, False
        for metric, mode in objectives:
            x, y = float(a[metric]), float(b[metric])
            if mode == "min":
                x, y = -x, -y
            ge &= x >= y
            gt |= x > y
        return ge, gt

    usable = [r for r in rows if all(r.get(m) is not None and not _isnan(r[m]) for m, _ in objectives)]
    front = []
    for r in usable:
        if not any(all(better_or_equal(o, r)) for o in usable if o is not r):
            front.append(r)
    return sorted(
        front, key=lambda r: -float(r[objectives[0][0]]) if objectives[0][1] == "max" else float(r[objectives[0][0]])
    )


def _isnan(x: Any) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def _summarize(
    space: SearchSpace, ctx: Any, experiment: str, privacy: SearchPrivacy | None, note: str, check: SpaceCheck
) -> SearchSummary:
    from eqdp_ray.results import ResultsStore, ResultsStoreError

    store = ResultsStore(ctx.store_uri)
    try:
        trials = store.read_trials(space.study)
    except ResultsStoreError:
        trials = None
    if trials is None or trials.empty:
        return SearchSummary(space.study, ctx.store_uri, experiment, 0, {}, [], [], privacy, note, check)
    counts = {str(k): int(v) for k, v in trials["status"].value_counts().items()}
    rankable = trials[trials["status"].isin(["completed", "stopped_early"])]
    rankable = rankable[rankable["best_val_accuracy"].notna()]
    top = rankable.sort_values(["best_val_accuracy", "trial_id"], ascending=[False, True]).head(5)
    columns = [
        c
        for c in trials.columns
        if c
        in (
            "trial_id",
            "status",
            "best_val_accuracy",
            "final_val_accuracy",
            "test_accuracy",
            "epsilon",
            "steps",
            "sample_rate",
            "sigma",
            "num_params",
            "device_seconds",
            "params_json",
        )
    ]
    top_rows = top[columns].to_dict("records")
    pareto: list[dict[str, Any]] = []
    if space.multi_objective:
        names = {"val_accuracy": "best_val_accuracy"}
        objectives = [(names.get(o.metric, o.metric), o.mode) for o in space.objectives]
        pareto = pareto_front(rankable.to_dict("records"), objectives)
        pareto = [{k: r.get(k) for k in columns} for r in pareto]
    return SearchSummary(
        space.study, ctx.store_uri, experiment, len(trials), counts, top_rows, pareto, privacy, note, check
    )


def validate_space(
    space: str | Path | Mapping[str, Any] | SearchSpace, overrides: Iterable[str] = (), *, train_size: int | None = None
) -> tuple[SearchSpace, SpaceCheck, SearchPrivacy | None]:
    """Every check that `run_search` makes before starting Ray, without running anything."""
    space = load_space(space, overrides)
    size = train_size if train_size is not None else train_size_of(space)
    check = check_space(space, size)
    privacy = plan_search_privacy(space, size) if space.private_selection else None
    return space, check, privacy
