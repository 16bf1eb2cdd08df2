"""Run a search: Ray Tune's Tuner with Optuna (define-by-run) and ASHA, resumable, results in the store.

The experiment directory is `<storage>/<study>`; `storage` defaults to `<store>/experiments`,
so a study's Parquet rows and its Ray Tune state (checkpoints, searcher state) live side by
side. Next to Tune's files we keep `eqdp-study.json`: the space as it was parsed, the store
it writes to, and (random-count searches) the number of trials that was drawn and the privacy
of the search. `--resume` refuses to continue a study whose space or store has changed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eqdp_ray.config import SpaceError
from eqdp_ray.config.space import CONDITION_DEFAULTS, SearchSpace, TrialCount, load_space
from eqdp_ray.config.storage import DEFAULT_STORE_URI, canonical_location, open_location
from eqdp_ray.privacy.epsilon_format import format_epsilon
from eqdp_ray.privacy.search import PAPERNOT_STEINKE
from eqdp_ray.privacy.selection import SearchPrivacy, count_distribution, search_privacy
from eqdp_ray.train.cluster import (
    ClusterError,
    check_local_cpus,
    check_resources,
    check_writable,
    connect_ray,
    local_cpus,
    will_start_local_ray,
)
from eqdp_ray.tune.budget import (
    PS_NOT_COVERED,
    SCOPE_TRIAL_NOTE,
    BudgetDescription,
    in_search_scope,
    plan_study_budget,
)
from eqdp_ray.tune.feasibility import SpaceCheck, check_space, privacy_candidates, split_sizes_of
from eqdp_ray.tune.interrupted_upload import finish_interrupted_upload

logger = logging.getLogger(__name__)

STUDY_FILE = "eqdp-study.json"
ADAPTIVE_NOTE = (
    "privacy of the search: each trial spent at most epsilon={eps} (delta={delta}), but this search ({how}) has "
    "no search-level bound: the Papernot-Steinke bound covers only random search with a random number of trials "
    "and no early stopping; adaptive searches (TPE, ASHA) are NOT covered by it. Releasing the best trial leaks "
    "more than one trial's epsilon. For a search-level guarantee use sampler: random with num_samples: "
    "{{distribution: truncated_negative_binomial, mean: ...}}; see docs/SEARCH_SPACES.md."
)

RANDOM_COUNT_TRIAL_NOTE = (
    "The number of trials is random, but no Papernot-Steinke bound applies either: it covers releasing only the "
    "best trial's output, while in scope 'trial' every trial releases its exact validation accuracy and training "
    "metrics and the best is chosen on them. Use privacy.scope: search for a bound on the best trial."
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


#: The store columns kept in `SearchSummary.top` and `.pareto` rows (in the store's column order there).
SUMMARY_COLUMNS: tuple[str, ...] = (
    "trial_id", "status", "best_val_accuracy", "final_val_accuracy", "test_accuracy", "epsilon", "steps",
    "sample_rate", "sigma", "num_params", "device_seconds", "params_json",
)  # fmt: skip


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
    ledger: dict[str, Any] | None = None  # scope `search`: the study's ledger (tune.ledger.ledger_summary)
    # scope `search` with a random count (Papernot-Steinke): its bound covers the best trial's configuration,
    # score and model only, so what is printed by default is that trial alone, without counts
    best_only: bool = False


def default_storage(store: str) -> str:
    """Tune's experiment storage when --storage is not given: `<store>/experiments` (absolute if local)."""
    return canonical_location(store).rstrip("/") + "/experiments"


def _read_study_file(experiment: str) -> dict[str, Any] | None:
    import pyarrow.fs as pafs

    fs, path = open_location(experiment)
    target = f"{path}/{STUDY_FILE}"
    if fs.get_file_info(target).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(target) as f:
        return json.loads(f.read().decode())


def _write_study_file(experiment: str, data: dict[str, Any]) -> None:
    fs, path = open_location(experiment)
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


@dataclass
class StudyPlan:
    """Everything `run_search` decides before it reaches a cluster; deciding it writes nothing."""

    space: SearchSpace
    check: SpaceCheck
    train_size: int
    store_uri: str
    storage: str
    experiment: str
    resume: bool
    saved: dict[str, Any] | None
    privacy: SearchPrivacy | None
    num_trials: int
    note: str
    val_size: int = 0
    budget: BudgetDescription | None = None  # scope `search`: the calibration every trial draws on

    @property
    def search_epsilon(self) -> float | None:
        """Scope `search` only: in scope `trial` every trial releases exact scores and training metrics, which
        no search-level bound covers (the Papernot-Steinke one assumes only the best trial's output leaves)."""
        return self.budget.plan.epsilon if self.budget is not None else None

    @property
    def search_delta(self) -> float | None:
        return self.budget.plan.delta if self.budget is not None else None


def _check_study_state(
    space: SearchSpace, experiment: str, store_uri: str, saved: dict[str, Any] | None, resume: bool
) -> None:
    """A new study must not exist yet; a resumed one must exist with the same space and store."""
    from ray import tune

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


def _trial_budget(
    space: SearchSpace, train_size: int, saved: dict[str, Any] | None, resume: bool
) -> tuple[SearchPrivacy | None, int, str]:
    """The search's privacy, its number of trials (drawn in secret for a random-count search) and what to tell."""
    if space.private_selection:
        privacy = plan_search_privacy(space, train_size)
        num_trials = int(saved["num_trials"]) if resume and saved else _draw_trials(space)
        seeded = space.sampler.seed is not None
        note = privacy.describe() + (
            " The sampler seed is fixed: the number of trials and the candidates are "
            "predictable, so this run is reproducible but NOT private."
            if seeded
            else ""
        )
        return privacy, num_trials, note
    how = ["adaptive TPE sampler" if space.sampler.type == "tpe" else "a fixed number of random trials"]
    if space.scheduler.type == "asha":
        how.append("adaptive ASHA early stopping")
    note = ADAPTIVE_NOTE.format(how=", ".join(how), eps=space.privacy["target_epsilon"], delta=space.privacy["delta"])
    return None, int(space.num_samples), note  # type: ignore[arg-type]


def plan_study(
    space: SearchSpace, *, store: str, storage_path: str | None, resume: bool, log: Callable[[str], None]
) -> StudyPlan:
    """Check the space, where the study lives and whether it may start or resume; reads, never writes."""
    train_size, val_size = split_sizes_of(space)
    check = check_space(space, train_size)
    for warning in check.warnings:
        log(f"[eqdp-ray] warning: {warning}")
    storage = storage_path or default_storage(store)
    experiment = f"{storage.rstrip('/')}/{space.study}"
    store_uri = canonical_location(store)
    saved = _read_study_file(experiment)
    _check_study_state(space, experiment, store_uri, saved, resume)
    privacy, num_trials, note = _trial_budget(space, train_size, saved, resume)
    budget = None
    if in_search_scope(space):
        budget = _search_budget(space, train_size, val_size, saved, resume)
        privacy = None  # the search's own plan replaces the per-trial Papernot-Steinke report
        note = budget.describe() + (
            " The sampler seed is fixed: the number of trials is predictable, so this run is reproducible but "
            "NOT private."
            if space.private_selection and space.sampler.seed is not None
            else ""
        )
    else:
        privacy = None  # no search-level bound in scope trial, not even for a random count: see RANDOM_COUNT_TRIAL_NOTE
        if space.private_selection:
            note = RANDOM_COUNT_TRIAL_NOTE
        note = SCOPE_TRIAL_NOTE.format(eps=space.privacy["target_epsilon"], delta=space.privacy["delta"]) + " " + note
    return StudyPlan(
        space,
        check,
        train_size,
        store_uri,
        storage,
        experiment,
        resume,
        saved,
        privacy,
        num_trials,
        note,
        val_size,
        budget,
    )


def _search_budget(
    space: SearchSpace, train_size: int, val_size: int, saved: dict[str, Any] | None, resume: bool
) -> BudgetDescription:
    """The calibration of a new study, or the one a resumed study started with (its ledger draws on it)."""
    from eqdp_ray.privacy.search import SearchPlan

    budget = plan_study_budget(space, train_size, val_size)
    if resume and saved and saved.get("search_plan"):
        return BudgetDescription(SearchPlan.from_dict(saved["search_plan"]), budget.shapes)
    return budget


def _check_locations_writable(plan: StudyPlan) -> None:
    """Probe the store and the experiment storage; the probe leaves nothing behind (see check_writable)."""
    for uri, what, flag in (
        (plan.store_uri, "results store", "--store"),
        (plan.storage, "experiment storage", "--storage"),
    ):
        try:
            check_writable(uri, what=what, flag=flag)
        except ClusterError as exc:
            raise SpaceError(str(exc)) from None


def _record_study(plan: StudyPlan) -> None:
    """eqdp-study.json: what `--resume` compares against, and the secret trial count it must reuse."""
    if plan.resume:
        return
    _write_study_file(
        plan.experiment,
        {
            "space": plan.space.to_dict(),
            "store": plan.store_uri,
            "num_trials": plan.num_trials,
            "search_epsilon": plan.search_epsilon,
            "search_delta": plan.search_delta,
            "search_plan": plan.budget.plan.to_dict() if plan.budget else None,
        },
    )


def _connect(address: str | None, space: SearchSpace, *, oversubscribe: bool, quiet: bool = False) -> bool:
    """Attach to a cluster (`address`) or start a local Ray; True if we started it (and must stop it).

    A local Ray advertises this machine's cores, so a trial that needs more fails here, before
    anything is written, unless oversubscribing was asked for. `quiet`: the trials' own output stays
    in their log files instead of being echoed on the driver (see `quiet_tune_output`).
    """
    r = space.resources
    local = will_start_local_ray(address)
    try:
        if local and not oversubscribe:
            check_local_cpus(r.workers, r.cpus_per_worker, fix="lower the resources block")
        started = connect_ray(
            address,
            num_cpus=local_cpus(r.workers, r.cpus_per_worker, oversubscribe=oversubscribe),
            include_dashboard=False,
            log_to_driver=not quiet,
        )
    except ClusterError as exc:
        raise SpaceError(str(exc)) from None
    if local:  # a cluster may autoscale: only a local Ray is known to be final
        try:
            check_resources(r.workers, r.cpus_per_worker, r.gpus_per_worker, fix="lower the resources block")
        except ClusterError as exc:
            if started:
                _shutdown_ray()
            raise SpaceError(str(exc)) from None
    return started


def _ray_temp_dir() -> str:
    """Ray's temporary directory on this machine (its session directories lie in it)."""
    import ray

    node = ray._private.worker._global_node  # None through Ray Client: then Ray's default place
    if node is None:
        return os.environ.get("RAY_TMPDIR", "/tmp/ray")
    return str(Path(node.get_session_dir_path()).parent)


def _make_tuner(plan: StudyPlan, ctx: Any) -> Any:
    """A new Tuner for the study, or the interrupted one restored from its experiment directory."""
    from ray import tune

    from eqdp_ray.tune.trial import StoreCallback, run_trial

    space = plan.space
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_resources(space))
    if plan.resume:  # the restored RunConfig is the one the study started with, `verbose` included
        finish_interrupted_upload(plan.experiment, space.study, _ray_temp_dir())
        tuner = tune.Tuner.restore(plan.experiment, trainable=trainable, resume_errored=True)
        # a Papernot-Steinke study started before such searches ran silently is silenced on resume too
        # (Tune offers no setter; `get_run_config` returns the restored config itself)
        local = getattr(tuner, "_local_tuner", None)
        if _best_only(plan) and local is not None:
            local.get_run_config().verbose = 0
        return tuner
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(space),
            scheduler=make_scheduler(space),
            num_samples=plan.num_trials,
            max_concurrent_trials=space.max_concurrent,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=space.study,
            storage_path=plan.storage,
            callbacks=[StoreCallback(ctx)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0 if _best_only(plan) else None,  # None: Tune's default; 0: see quiet_tune_output
        ),
    )


@contextlib.contextmanager
def quiet_tune_output(quiet: bool) -> Iterator[None]:
    """Tune without its console output, for a search whose number of trials is secret (Papernot-Steinke).

    Tune's default output prints the number of trials, a per-trial status table and every trial's results on
    the driver. `verbose=0` (set in `_make_tuner`) silences them in Tune's older console engine; its newer one
    (Ray 2.x's default) still prints a "Number of trials" table when the experiment starts, so the older one
    is chosen for the duration of `fit` (Tune reads RAY_AIR_NEW_OUTPUT there, as Ray's own examples set it
    for custom reporters). The variable is restored afterwards.
    """
    if not quiet:
        yield
        return
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before


def run_search(
    space: str | Path | Mapping[str, Any] | SearchSpace,
    *,
    store: str = DEFAULT_STORE_URI,
    address: str | None = None,
    resume: bool = False,
    storage_path: str | None = None,
    overrides: Iterable[str] = (),
    log: Callable[[str], None] = logger.info,
    checkpoint_every_s: float = 30.0,
    oversubscribe: bool = False,
) -> SearchSummary:
    """Validate the space, then run (or resume) its study; every trial lands in the results store.

    Nothing is written (store, experiment directory, eqdp-study.json) until the cluster is reached,
    so a failed start can simply be run again.
    `checkpoint_every_s`: least wall time between a trial's checkpoints (what `--resume` restarts from).
    `oversubscribe`: let a local Ray run a trial that needs more CPUs than this machine has.
    """
    from eqdp_ray.results import ResultsStore
    from eqdp_ray.tune.trial import StudyContext

    space = load_space(space, overrides)
    plan = plan_study(space, store=store, storage_path=storage_path, resume=resume, log=log)
    log(
        f"[eqdp-ray] study '{space.study}': {len(space.search)} searched keys, {plan.check.points_checked} sampled "
        f"configs checked, {plan.train_size} training examples; experiment at {plan.experiment}"
    )
    log(f"[eqdp-ray] {plan.note}")
    ctx = StudyContext(
        space=space,
        store_uri=plan.store_uri,
        train_size=plan.train_size,
        storage_path=plan.storage,
        search_epsilon=plan.search_epsilon,
        search_delta=plan.search_delta,
        checkpoint_every_s=checkpoint_every_s,
        search_plan=plan.budget.plan.to_dict() if plan.budget else None,
    )
    _check_locations_writable(plan)
    quiet = _best_only(plan)  # Papernot-Steinke: the number of trials and the trials' logs must not leave
    if plan.num_trials == 0:
        _record_study(plan)  # the draw is spent: running the space again is a second search
        if quiet:  # the count is not covered, even when it is 0: say only that there is no output
            log(
                "[eqdp-ray] the search ends without output, as its Papernot-Steinke bound allows. Running it "
                "again is a second search whose privacy adds up."
            )
        else:
            log(
                "[eqdp-ray] the secret draw gave K=0 trials: the search ends without output. Running it again "
                "is a second search whose privacy adds up."
            )
        return _summarize(plan, ctx)

    started_ray = _connect(address, space, oversubscribe=oversubscribe, quiet=quiet)
    try:
        _record_study(plan)  # only now: a study that never reached its cluster leaves nothing to resume
        keeper = None
        if plan.budget is not None:
            from eqdp_ray.tune.ledger import start_keeper

            keeper = start_keeper(space.study, plan.store_uri, plan.budget.plan)
        with quiet_tune_output(quiet):
            _make_tuner(plan, ctx).fit()
        ledger = _ledger_summary(keeper, log)
    finally:
        if started_ray:
            _shutdown_ray()
    ResultsStore(plan.store_uri).compact(space.study)
    summary = _summarize(plan, ctx)
    summary.ledger = ledger
    return summary


def _ledger_summary(keeper: Any, log: Callable[[str], None]) -> dict[str, Any] | None:
    if keeper is None:
        return None
    import ray

    summary = ray.get(keeper.summary.remote())
    if summary["method"] == PAPERNOT_STEINKE:  # the number of attempts and their composition are not covered
        log(
            f"[eqdp-ray] search ledger: ({format_epsilon(summary['guarantee'])}, {summary['delta']:.3g})-DP guaranteed for the "
            f"best trial's configuration, score and model only (target {format_epsilon(summary['target_epsilon'])}, "
            f"{summary['method']}); {PS_NOT_COVERED}"
        )
        return summary
    log(
        f"[eqdp-ray] search ledger: ({format_epsilon(summary['guarantee'])}, {summary['delta']:.3g})-DP guaranteed for the study "
        f"(target {format_epsilon(summary['target_epsilon'])}, {summary['method']}); {summary['attempts']} trial attempts, "
        f"composition as they ran: epsilon {format_epsilon(summary['epsilon_spent'])}"
    )
    return summary


def _best_only(plan: StudyPlan) -> bool:
    """A Papernot-Steinke search in scope `search`: only its best trial's output is covered by its bound."""
    return plan.budget is not None and plan.budget.plan.method == PAPERNOT_STEINKE


def _shutdown_ray() -> None:
    import ray

    ray.shutdown()


def _comparable(space: Any) -> Any:
    """The parsed space as JSON data, minus where it was read from (the same file may be given by another path)."""
    data = json.loads(json.dumps(space, default=str)) if space is not None else None
    if isinstance(data, dict):
        data.pop("source", None)
    return data


def _summarize(plan: StudyPlan, ctx: Any) -> SearchSummary:
    from eqdp_ray.results import ResultsStore, ResultsStoreError
    from eqdp_ray.results.query import pareto_front

    space, experiment, privacy, note, check = plan.space, plan.experiment, plan.privacy, plan.note, plan.check

    store = ResultsStore(ctx.store_uri)
    try:
        trials = store.read_trials(space.study)
    except ResultsStoreError:
        trials = None
    if trials is None or trials.empty:
        return SearchSummary(
            space.study, ctx.store_uri, experiment, 0, {}, [], [], privacy, note, check, best_only=_best_only(plan)
        )
    counts = {str(k): int(v) for k, v in trials["status"].value_counts().items()}
    rankable = trials[trials["status"].isin(["completed", "stopped_early"])]
    rankable = rankable[rankable["best_val_accuracy"].notna()]
    top = rankable.sort_values(["best_val_accuracy", "trial_id"], ascending=[False, True]).head(5)
    columns = [c for c in trials.columns if c in SUMMARY_COLUMNS]
    top_rows = top[columns].to_dict("records")
    pareto: list[dict[str, Any]] = []
    if space.multi_objective:
        names = {"val_accuracy": "best_val_accuracy"}
        objectives = [(names.get(o.metric, o.metric), o.mode) for o in space.objectives]
        front = pareto_front(rankable, objectives).to_dict("records")
        pareto = [{k: r.get(k) for k in columns} for r in front]
    return SearchSummary(
        space.study,
        ctx.store_uri,
        experiment,
        len(trials),
        counts,
        top_rows,
        pareto,
        privacy,
        note,
        check,
        best_only=_best_only(plan),
    )


def validate_space(
    space: str | Path | Mapping[str, Any] | SearchSpace, overrides: Iterable[str] = (), *, train_size: int | None = None
) -> tuple[SearchSpace, SpaceCheck, SearchPrivacy | BudgetDescription | None]:
    """Every check that `run_search` makes before starting Ray, without running anything.

    The third item: scope `search`, the study's calibrated budget; scope `trial`, None: it has no
    search-level bound (its trials release exact scores, which not even a random count of trials covers).
    """
    space = load_space(space, overrides)
    if train_size is not None:
        size, val_size = train_size, max(1, round(train_size / 9))  # a caller that knows only the training size
    else:
        size, val_size = split_sizes_of(space)
    check = check_space(space, size)
    if in_search_scope(space):
        return space, check, plan_study_budget(space, size, val_size)  # the calibration the study will use
    if space.private_selection:
        plan_search_privacy(space, size)  # the checks that `run_search` makes (one RDP curve over all trials)
    return space, check, None
