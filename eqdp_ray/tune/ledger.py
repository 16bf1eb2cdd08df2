"""The study's search ledger as one Ray actor: every trial reserves before it trains, settles when it ends.

Trials run concurrently (and on other nodes), so the check "does this attempt still fit the
budget?" and the record of it must happen in one place, one at a time: a named actor that owns
the `privacy.search.SearchLedger` of its study and appends each event to the results store's
`ledger` table before it answers. The store, not the actor, is the truth: a new driver (after a
kill, `--resume`) rebuilds the ledger from the store's events, in which an attempt that never
settled still counts at its reservation.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

from eqdp_ray.privacy.search import SearchLedger, SearchPlan, TrialMechanism


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class LedgerKeeper:
    """The one writer of a study's ledger (run as a Ray actor by `start_keeper`)."""

    def __init__(self, study: str, store_uri: str, plan: dict[str, Any]) -> None:
        from eqdp_ray.results import ResultsStore

        self.study = study
        self.store = ResultsStore(store_uri)
        self.plan = SearchPlan.from_dict(plan)
        events = self.store.read_ledger(study).to_dict("records")
        if not any(e["event"] == "plan" for e in events):  # the store says which budget its events draw on
            row = {"study": study, "trial_id": "(study)", "attempt": 0, "event": "plan", "timestamp": _now()}
            self.store.write_ledger([{**row, "plan_json": json.dumps(plan)}])
        self.ledger = SearchLedger.from_events(self.plan, events)

    def _write(self, trial_id: str, attempt: int, event: str, mechanism: TrialMechanism) -> None:
        row = {"study": self.study, "trial_id": trial_id, "attempt": attempt, "event": event, "timestamp": _now()}
        row.update(mechanism.to_dict())
        self.store.write_ledger([row])

    def reserve(self, trial_id: str, mechanism: dict[str, Any]) -> int | None:
        """The attempt number if the attempt fits the budget (recorded before this returns), else None."""
        m = TrialMechanism.from_dict(mechanism)
        entry = self.ledger.reserve(trial_id, m)
        if entry is None:
            return None
        try:
            self._write(trial_id, entry.attempt, "reserve", m)
        except BaseException:
            self.ledger.entries.remove(entry)  # not recorded: not granted
            raise
        return entry.attempt

    def settle(self, trial_id: str, attempt: int | None, mechanism: dict[str, Any]) -> None:
        """Record what an attempt ran; `attempt=None`: the trial's latest unsettled attempt (if any)."""
        if attempt is None:
            open_ = [e for e in self.ledger.entries if e.trial_id == trial_id and e.spent is None]
            if not open_:
                return
            attempt = open_[-1].attempt
            reserved = open_[-1].reserved
            m = TrialMechanism.from_dict(mechanism)
            m = TrialMechanism(  # never more than reserved: the driver's view may overcount by a pass
                reserved.noise_multiplier,
                reserved.sample_rate,
                min(m.steps, reserved.steps),
                reserved.score_noise,
                min(m.score_releases, reserved.score_releases),
            )
        else:
            m = TrialMechanism.from_dict(mechanism)
        self.ledger.settle(trial_id, attempt, m)
        self._write(trial_id, attempt, "settle", m)

    def summary(self) -> dict[str, Any]:
        return ledger_summary(self.ledger)


def ledger_summary(ledger: SearchLedger) -> dict[str, Any]:
    """The numbers `best`, `results` and the trial rows show for a study."""
    trials = sorted({e.trial_id for e in ledger.entries})
    return {
        "method": ledger.plan.method,
        "guarantee": ledger.guarantee(),
        "epsilon_spent": ledger.epsilon_spent(),
        "delta": ledger.plan.delta,
        "target_epsilon": ledger.plan.target_epsilon,
        "attempts": len(ledger.entries),
        "unsettled": sum(e.spent is None for e in ledger.entries),
        "trials": {t: ledger.trial_epsilon(t) for t in trials},
    }


def keeper_name(study: str) -> str:
    return f"eqdp-ledger-{study}"


def get_keeper(study: str) -> Any:
    """The running keeper of `study` (trials and the driver's callback look it up by name)."""
    import ray

    return ray.get_actor(keeper_name(study))


def start_keeper(study: str, store_uri: str, plan: SearchPlan) -> Any:
    """Start (or, after a driver restart in the same cluster, replace) the study's keeper actor."""
    import ray

    name = keeper_name(study)
    try:
        ray.kill(ray.get_actor(name))  # a keeper left by a killed driver: the store is the truth
    except ValueError:
        pass
    actor = ray.remote(num_cpus=0, max_restarts=0)(LedgerKeeper)
    return actor.options(name=name).remote(study, store_uri, plan.to_dict())
