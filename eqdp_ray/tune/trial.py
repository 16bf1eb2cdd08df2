"""One trial: build its config, train, report each validation pass to Tune, record the result.

Who writes which row to the results store, and why:

* the trial writes a ``running`` row when it starts, and its ``completed`` row (with the test
  accuracy, which Tune never sees) and full history when it finishes;
* a trial that ASHA stops, or that crashes, is killed before it can write anything, so the
  driver-side `StoreCallback` writes ``stopped_early`` / ``failed`` rows from what the trial
  reported. It knows a trial finished on its own from the ``eqdp_final`` flag of the last report.

The store keeps the latest row of each (study, trial_id), so a restored trial that writes
again replaces its earlier row instead of adding one.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from eqdp_ray import __version__
from eqdp_ray.config import RunConfig, config_to_dict
from eqdp_ray.config.space import SearchSpace, resolve_params, trial_config
from eqdp_ray.train.cluster import show_progress_in_worker_log

logger = logging.getLogger(__name__)

FINAL = "eqdp_final"  # set on a trial's last report: it wrote its own row
CHECKPOINT_FILE = "state.pt"
META_FILE = "meta.json"


@dataclass(frozen=True)
class StudyContext:
    """What every trial of a study shares; passed to trials with `tune.with_parameters`."""

    space: SearchSpace
    store_uri: str
    train_size: int
    storage_path: str
    search_epsilon: float | None = None
    search_delta: float | None = None
    checkpoint_every_s: float = 30.0  # tiny trials report often; a checkpoint per report floods Tune's state
    search_plan: dict[str, Any] | None = None  # scope `search`: privacy.search.SearchPlan.to_dict()

    @property
    def scope(self) -> str:
        return "search" if self.search_plan is not None else "trial"

    def plan(self) -> Any:
        from eqdp_ray.privacy.search import SearchPlan

        return SearchPlan.from_dict(self.search_plan) if self.search_plan is not None else None


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def devices_per_trial(space: SearchSpace) -> float:
    """Devices a trial holds: its GPUs if it has any, else its workers (CPU processes)."""
    r = space.resources
    return r.workers * r.gpus_per_worker if r.gpus_per_worker else float(r.workers)


def _penalty(space: SearchSpace) -> dict[str, float]:
    """What an infeasible trial reports: the worst value of every objective, so samplers learn to avoid it."""
    return {o.metric: (0.0 if o.mode == "max" else float("inf")) for o in space.objectives}


def trial_row(ctx: StudyContext, trial_id: str, status: str, config: RunConfig | None, **values: Any) -> dict[str, Any]:
    """A results-store row; `values` fill the metric columns (missing ones stay null)."""
    p = ctx.space.privacy
    row: dict[str, Any] = {
        "study": ctx.space.study,
        "trial_id": trial_id,
        "status": status,
        "target_epsilon": float(p["target_epsilon"]),
        "delta": float(p["delta"]),
        "accountant": p["accountant"],
        "package_version": __version__,
        "search_epsilon": ctx.search_epsilon,
        "search_delta": ctx.search_delta,
        "search_mode": "random_count" if ctx.space.private_selection else ctx.space.sampler.type,
        "budget_scope": ctx.scope,
        "search_method": ctx.search_plan["method"] if ctx.search_plan else None,
    }
    if ctx.search_plan is None:
        row["privacy_note"] = "budget scope trial: the released best model is NOT covered by a search-level bound"
    if config is not None:
        row["config"] = config_to_dict(config)
    row.update({k: v for k, v in values.items() if v is not None})
    return row


def history_rows(ctx: StudyContext, trial_id: str, records: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        if "val_accuracy" not in r or "step" not in r:
            continue
        rows.append(
            {
                "study": ctx.space.study,
                "trial_id": trial_id,
                "epoch": int(math.floor(float(r.get("epoch", 0)) + 1e-9)),
                "step": int(r["step"]),
                "train_loss": r.get("train_loss") if ctx.scope == "trial" else None,
                "train_accuracy": r.get("train_accuracy") if ctx.scope == "trial" else None,
                "val_accuracy": r.get("val_accuracy"),
                "epsilon": r.get("epsilon"),
                "samples_per_s": r.get("samples_per_s"),
                "timestamp": _dt.datetime.fromtimestamp(float(r.get("timestamp") or time.time()), _dt.timezone.utc),
            }
        )
    return rows


def _store(ctx: StudyContext) -> Any:
    from eqdp_ray.results import ResultsStore

    return ResultsStore(ctx.store_uri)


def _load_checkpoint() -> tuple[dict[str, Any] | None, dict[str, Any]]:
    import torch

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None, {}
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        meta_path = Path(directory) / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return state, meta


def _load_trial_data(config: RunConfig) -> Any:
    from eqdp_ray.data import load_dataset

    d = config.data
    return load_dataset(
        d.name,
        d.root,
        download=d.download,
        val_size=d.val_size,
        seed=config.seed,
        train_subset=d.train_subset,
        test_subset=d.test_subset,
    )


class TrialReporter:
    """Turns the loop's evaluation records into Tune reports, and checkpoints every so often.

    Keeps the best validation accuracy across a restore (from the checkpoint's history) and the
    wall time across a restore (from its meta file), so the reported numbers cover the whole trial.
    """

    def __init__(
        self,
        ctx: StudyContext,
        *,
        steps: int,
        sample_rate: float,
        sigma: float,
        resume_state: dict[str, Any] | None,
        meta: Mapping[str, Any],
    ) -> None:
        self.ctx, self.steps, self.sample_rate, self.sigma = ctx, steps, sample_rate, sigma
        self.devices = devices_per_trial(ctx.space)
        self.elapsed_before = float(meta.get("elapsed_s", 0.0))
        self.started_at = _dt.datetime.fromisoformat(meta["started_at"]) if "started_at" in meta else _now()
        self.clock = self.last_checkpoint = time.time()
        earlier = [float(h["val_accuracy"]) for h in (resume_state or {}).get("history", [])]
        self.best_val = max(earlier, default=-1.0)
        self.last: dict[str, Any] = {}

    def wall_time(self) -> float:
        return self.elapsed_before + time.time() - self.clock

    def metrics(self, record: Mapping[str, Any], num_params: int) -> dict[str, Any]:
        self.best_val = max(self.best_val, float(record["val_accuracy"]))
        wall = self.wall_time()
        out = {
            "val_accuracy": float(record["val_accuracy"]),
            "best_val_accuracy": self.best_val,
            "epsilon": float(record["epsilon"]),
            "step": int(record["step"]),
            "total_steps": self.steps,
            "epoch": float(record["epoch"]),
            "score_releases": int(record.get("score_releases", 0)),
            "samples_per_s": float(record["samples_per_s"]),
            "sigma": self.sigma,
            "sample_rate": self.sample_rate,
            "num_params": num_params,
            "wall_time_s": wall,
            "device_seconds": wall * self.devices,
            "timestamp": time.time(),
        }
        if "train_loss" in record:  # only in scope `trial`: unnoised metrics of private batches
            out["train_loss"] = float(record["train_loss"])
            out["train_accuracy"] = float(record["train_accuracy"])
        return out

    def on_evaluation(self, record: dict[str, Any], state: Any) -> None:
        """The loop's callback (single-worker trials): report each validation pass, checkpoint at times."""
        import torch

        from eqdp_ray.models import count_parameters

        record["timestamp"] = time.time()  # lands in state.history too, and so in the history rows
        m = self.metrics(record, count_parameters(state.model))
        self.last.update(m)
        if record["step"] >= self.steps:
            return  # the last pass is reported after the trial has written its own row
        if time.time() - self.last_checkpoint < self.ctx.checkpoint_every_s:
            tune.report(m)
            return
        with tempfile.TemporaryDirectory() as directory:
            torch.save(state.state_dict(), Path(directory) / CHECKPOINT_FILE)
            Path(directory, META_FILE).write_text(
                json.dumps({"elapsed_s": m["wall_time_s"], "started_at": self.started_at.isoformat()})
            )
            tune.report(m, checkpoint=tune.Checkpoint.from_directory(directory))
        self.last_checkpoint = time.time()


def _run_training(
    ctx: StudyContext,
    config: RunConfig,
    trial_id: str,
    data: Any,
    reporter: TrialReporter,
    resume_state: dict[str, Any] | None,
) -> dict[str, Any]:
    """One worker trains in this process; several launch their own TorchTrainer."""
    if ctx.space.resources.workers == 1:
        from eqdp_ray.train import train

        return train(
            config, on_evaluation=reporter.on_evaluation, resume_state=resume_state, data=data, log=logger.info
        )
    from eqdp_ray.models import model_summary

    options = {"in_channels": data.in_channels, "num_classes": data.num_classes, **config.model.options}
    num_params = int(model_summary(config.model.name, **options)["params"])
    return _train_distributed(ctx, config, trial_id, metrics_of=lambda record: reporter.metrics(record, num_params))


def _final_metrics(result: Mapping[str, Any], reporter: TrialReporter) -> dict[str, Any]:
    """The trial's last report: the run's result, with the best validation accuracy over the whole trial."""
    history = result.get("history") or []
    if reporter.last:
        final = dict(reporter.last)
    else:
        final = reporter.metrics(history[-1], int(result["num_params"])) if history else {}
    wall = reporter.wall_time()
    final.update(
        {
            "val_accuracy": float(result["val_accuracy"]),
            "step": int(result["steps"]),
            "epsilon": float(result["epsilon"]),
            "num_params": int(result["num_params"]),
            "sigma": reporter.sigma,
            "sample_rate": reporter.sample_rate,
            "total_steps": reporter.steps,
            "wall_time_s": wall,
            "device_seconds": wall * reporter.devices,
        }
    )
    seen = [float(h["val_accuracy"]) for h in history]
    final["best_val_accuracy"] = max([float(result["best_val_accuracy"]), final["val_accuracy"], *seen])
    return final


def run_trial(params: dict[str, Any], ctx: StudyContext) -> None:
    """The Tune function trainable: one DP-SGD training run at the sampled hyperparameters."""
    import torch

    from eqdp_ray.privacy import PrivacyBudgetError, plan_fixed_noise, plan_privacy
    from eqdp_ray.train import steps_and_rate

    show_progress_in_worker_log()
    space = ctx.space
    trial_id = tune.get_context().get_trial_id()
    torch.set_num_threads(max(1, int(space.resources.cpus_per_worker)))
    config = trial_config(space, params, ctx.train_size, name=f"{space.study}-{trial_id}")
    store = _store(ctx)
    resume_state, meta = _load_checkpoint()
    data = _load_trial_data(config)
    steps, sample_rate = steps_and_rate(config, len(data.train_y))
    p = config.privacy
    base: dict[str, Any] = {
        "sample_rate": sample_rate,
        "planned_steps": steps,
        "params_json": json.dumps(resolve_params(space, params), default=str),
        "group": group_of(config),
    }
    mechanism = None
    try:
        if ctx.search_plan is not None:
            config, mechanism = _search_scoped(ctx, config, sample_rate, steps)
            p = config.privacy
            plan = plan_fixed_noise(p.target_epsilon, p.delta, sample_rate, steps, p.noise_multiplier, p.accountant)
        else:
            plan = plan_privacy(p.target_epsilon, p.delta, sample_rate, steps, p.accountant)
    except PrivacyBudgetError as exc:
        _report_infeasible(ctx, store, trial_id, config, base, steps, exc)
        return
    attempt = None
    if mechanism is not None:
        attempt, done = _reserve(ctx, trial_id, mechanism, resume_state)
        if attempt is None:
            _report_infeasible(ctx, store, trial_id, config, base, steps, RuntimeError(REFUSED), status="refused")
            return
        base["trial_search_epsilon"] = _share(ctx, mechanism)
    reporter = TrialReporter(
        ctx, steps=steps, sample_rate=sample_rate, sigma=plan.noise_multiplier, resume_state=resume_state, meta=meta
    )
    base.update(sigma=plan.noise_multiplier, started_at=reporter.started_at)
    store.write_trial(trial_row(ctx, trial_id, "running", config, **base, steps=0, epsilon=0.0))

    result = _run_training(ctx, config, trial_id, data, reporter, resume_state)
    if mechanism is not None:
        ran = _ran(mechanism, int(result["steps"]) - done[0], int(result["score_releases"]) - done[1])
        import ray

        ray.get(_keeper(ctx).settle.remote(trial_id, attempt, ran.to_dict()))  # before the row: the ledger comes first
        base["trial_search_epsilon"] = _share(ctx, _ran(mechanism, int(result["steps"]), int(result["score_releases"])))

    final = _final_metrics(result, reporter)
    store.write_history(history_rows(ctx, trial_id, result.get("history", [])))
    store.write_trial(
        trial_row(
            ctx,
            trial_id,
            "completed" if final["step"] >= steps else "stopped_early",
            config,
            **base,
            steps=final["step"],
            epsilon=final["epsilon"],
            best_val_accuracy=final["best_val_accuracy"],
            final_val_accuracy=final["val_accuracy"],
            test_accuracy=result.get("test_accuracy"),
            num_params=final["num_params"],
            wall_time_s=final["wall_time_s"],
            device_seconds=final["device_seconds"],
            finished_at=_now(),
            noise_source=result.get("noise_source"),
            workers=space.resources.workers,
        )
    )
    final[FINAL] = True
    final.pop("test_accuracy", None)  # never shown to the searcher
    tune.report(final)


REFUSED = (
    "refused: the search budget has no room for this trial (the ledger's attempts so far plus this one would "
    "exceed the study's epsilon); it stopped before touching the data"
)


def _keeper(ctx: StudyContext) -> Any:
    from eqdp_ray.tune.ledger import get_keeper

    return get_keeper(ctx.space.study)


def _search_scoped(ctx: StudyContext, config: RunConfig, sample_rate: float, steps: int) -> tuple[RunConfig, Any]:
    """Scope `search`: the trial's sigma and score noise come from the study's calibration, nothing unnoised leaves."""
    from eqdp_ray.privacy import epsilon_spent
    from eqdp_ray.tune.budget import trial_mechanism

    plan = ctx.plan()
    mechanism = trial_mechanism(plan, ctx.space, sample_rate, steps)
    p = config.privacy
    # The run's own epsilon (its accountant, training steps only) is informational here: the study's
    # ledger accounts the trial. It is at most the trial's share, up to the accountants' order grids.
    own = epsilon_spent(mechanism.noise_multiplier, sample_rate, steps, p.delta, p.accountant)
    privacy = p.model_copy(
        update={
            "noise_multiplier": mechanism.noise_multiplier,
            "score_noise": mechanism.score_noise,
            "release_train_metrics": False,
            "target_epsilon": max(plan.trial_epsilon, own) * (1 + 1e-9),
        }
    )
    return config.model_copy(update={"privacy": privacy}), mechanism


def _reserve(
    ctx: StudyContext, trial_id: str, mechanism: Any, resume_state: Mapping[str, Any] | None
) -> tuple[int | None, tuple[int, int]]:
    """Reserve what this attempt may still run (a restored trial: from its checkpoint on) before it trains."""
    import ray

    done = (int(resume_state["step"]), len(resume_state.get("history", []))) if resume_state else (0, 0)
    remaining = _ran(mechanism, mechanism.steps - done[0], mechanism.score_releases - done[1])
    return ray.get(_keeper(ctx).reserve.remote(trial_id, remaining.to_dict())), done


def _ran(mechanism: Any, steps: int, releases: int) -> Any:
    from eqdp_ray.privacy.search import TrialMechanism

    return TrialMechanism(
        mechanism.noise_multiplier,
        mechanism.sample_rate,
        max(0, min(steps, mechanism.steps)),
        mechanism.score_noise,
        max(0, min(releases, mechanism.score_releases)),
    )


def _share(ctx: StudyContext, mechanism: Any) -> float:
    """A trial's share of the study's budget: its own mechanisms, converted at the study's delta."""
    from eqdp_ray.privacy import rdp_to_epsilon

    return rdp_to_epsilon(mechanism.rdp(), float(ctx.search_plan["delta"]))[0]


def _report_infeasible(
    ctx: StudyContext,
    store: Any,
    trial_id: str,
    config: RunConfig,
    base: Mapping[str, Any],
    steps: int,
    error: Exception,
    status: str = "failed",
) -> None:
    """A trial whose budget cannot be met stops before touching the data: a failed row, the worst score."""
    store.write_trial(
        trial_row(
            ctx,
            trial_id,
            "failed",
            config,
            **base,
            started_at=_now(),
            steps=0,
            epsilon=0.0,
            finished_at=_now(),
            error=str(error) if status == "refused" else f"infeasible: {error}",
            wall_time_s=0.0,
            device_seconds=0.0,
        )
    )
    tune.report({**_penalty(ctx.space), "step": 0, "total_steps": steps, "infeasible": True, FINAL: True})


def group_of(config: RunConfig | None) -> str | None:
    """The row's ``group``: the model's symmetry group from the registry (e.g. "D4->D2"), "" for a model
    without one (so that readers need not rebuild the model to know), None if the config is unusable."""
    if config is None:
        return None
    from eqdp_ray.models import describe_group

    try:
        return describe_group(config.model.name, **config.model.options) or ""
    except (ValueError, TypeError, KeyError):  # an invalid model must not cost the trial its row
        return None


def _train_distributed(ctx: StudyContext, config: RunConfig, trial_id: str, *, metrics_of: Any) -> dict[str, Any]:
    """A trial with several workers launches its own TorchTrainer; its epochs reach Tune through a callback.

    Ray Train runs the callback in its controller, not in this process: it only forwards. The
    training run is named after the trial, so a trial restored by `--resume` continues that run
    from its latest checkpoint instead of starting again.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    from eqdp_ray.train.distributed import train_distributed

    class EpochsToTune(TuneReportCallback):
        """Forward rank 0's validation passes (not its final bookkeeping report) in the trial's format."""

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            record = metrics[0] if metrics else {}
            if "val_accuracy" in record and not record.get("final"):
                self._training_actor_item_queue.put(metrics_of(record))

    r = ctx.space.resources
    with tempfile.TemporaryDirectory() as output:
        return train_distributed(
            config,
            workers=r.workers,
            gpus_per_worker=r.gpus_per_worker,
            cpus_per_worker=r.cpus_per_worker,
            storage=f"{ctx.storage_path.rstrip('/')}/{ctx.space.study}-train",
            output_dir=output,
            callbacks=[EpochsToTune()],
            run_name=f"{ctx.space.study}-{trial_id}",
            log=logger.info,
        )


# ------------------------------------------------------------------------------------------
# Driver side: rows for trials that could not write their own
# ------------------------------------------------------------------------------------------


def _error_text(trial: Any) -> str:
    try:
        error = trial.get_error()
    except Exception:  # noqa: BLE001 - best effort: a missing error file must not lose the row
        error = None
    text = str(error) if error is not None else "unknown error (see the trial's error.txt)"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:1000]


class StoreCallback(tune.Callback):
    """Writes stopped_early and failed rows for trials that could not write their own (see module docstring).

    Module-level (not a closure) because Tune pickles it into the experiment state, and
    `--resume` restores it from there, history of unfinished trials included (get_state).
    """

    def __init__(self, ctx: StudyContext) -> None:
        self.ctx = ctx
        self.history: dict[str, list[dict[str, Any]]] = {}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "val_accuracy" in result and not result.get(FINAL) and not result.get("infeasible"):
            keep = ["val_accuracy", "epsilon", "step", "epoch", "samples_per_s", "timestamp"]
            if self.ctx.scope == "trial":
                keep += ["train_loss", "train_accuracy"]
            self.history.setdefault(trial.trial_id, []).append({k: result.get(k) for k in keep})

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        if last.get(FINAL):
            self.history.pop(trial.trial_id, None)
            return
        self._write(
            trial,
            "stopped_early" if "val_accuracy" in last else "failed",
            None if "val_accuracy" in last else "ended before its first validation pass",
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, "failed", _error_text(trial))

    def _settle(self, trial: Any) -> None:
        """Scope `search`: a trial stopped by ASHA or crashed settles at what it reported, plus the pass that
        may have been under way (its score may be in the trial's log); the keeper caps it at the reservation."""
        last = trial.last_result or {}
        if self.ctx.search_plan is None or last.get("infeasible"):
            return
        if self.ctx.space.resources.workers > 1:
            # Ray Train's workers do not wait for Tune to take a report: by the time the trial is stopped
            # they may have run further steps and validation passes than Tune saw, so only the
            # reservation (the trial's worst case) bounds what it ran.
            return
        from eqdp_ray.tune.budget import eval_every_of
        from eqdp_ray.tune.ledger import get_keeper

        q = float(last.get("sample_rate") or 1.0)
        ran = {
            "noise_multiplier": float(last.get("sigma") or 1.0),  # the keeper keeps the reservation's own sigma
            "sample_rate": q,
            "steps": int(last.get("step") or 0) + eval_every_of(self.ctx.space, q),
            "score_noise": self.ctx.search_plan.get("score_noise"),
            "score_releases": int(last.get("score_releases") or 0) + 1,
        }
        try:
            import ray

            ray.get(get_keeper(self.ctx.space.study).settle.remote(trial.trial_id, None, ran))
        except Exception:  # noqa: BLE001 - an unsettled attempt counts its full reservation: safe
            logger.warning("could not settle trial %s in the search ledger; it counts its reservation", trial.trial_id)

    def _write(self, trial: Any, status: str, error: str | None) -> None:
        self._settle(trial)
        ctx, last = self.ctx, trial.last_result or {}
        try:
            config = trial_config(ctx.space, trial.config, ctx.train_size, name=f"{ctx.space.study}-{trial.trial_id}")
        except Exception:  # noqa: BLE001 - the row matters more than its config
            config = None
        store = _store(ctx)
        rows = history_rows(ctx, trial.trial_id, self.history.pop(trial.trial_id, []))
        if rows:
            store.write_history(rows)
        has_metrics = "val_accuracy" in last and not last.get("infeasible")
        store.write_trial(
            trial_row(
                ctx,
                trial.trial_id,
                status,
                config,
                trial_search_epsilon=self._share(trial),
                sigma=last.get("sigma"),
                sample_rate=last.get("sample_rate"),
                steps=last.get("step"),
                planned_steps=last.get("total_steps"),
                epsilon=last.get("epsilon"),
                best_val_accuracy=last.get("best_val_accuracy") if has_metrics else None,
                final_val_accuracy=last.get("val_accuracy") if has_metrics else None,
                num_params=last.get("num_params") if has_metrics else None,
                wall_time_s=last.get("wall_time_s"),
                device_seconds=last.get("device_seconds"),
                finished_at=_now(),
                error=error,
                group=group_of(config),
                params_json=json.dumps(resolve_params(ctx.space, trial.config), default=str),
            )
        )

    def _share(self, trial: Any) -> float | None:
        if self.ctx.search_plan is None:
            return None
        try:
            import ray

            from eqdp_ray.tune.ledger import get_keeper

            return ray.get(get_keeper(self.ctx.space.study).summary.remote())["trials"].get(trial.trial_id)
        except Exception:  # noqa: BLE001
            return None

    def get_state(self) -> dict[str, Any]:
        return {"history": self.history}

    def set_state(self, state: dict[str, Any]) -> None:
        self.history = dict(state.get("history", {}))


def is_final(result: Mapping[str, Any]) -> bool:
    return bool(result.get(FINAL))


__all__ = [
    "StudyContext",
    "StoreCallback",
    "run_trial",
    "trial_row",
    "history_rows",
    "devices_per_trial",
    "FINAL",
    "is_final",
]
