"""An interrupted study resumes: finished trials are not re-run, nothing is duplicated.

The study is a random search with a random number of trials in scope `trial`, so this also checks
that no search-level (epsilon, delta) lands on its rows (its trials release exact scores).
"""

import json
import signal

import pytest

from eqdp_ray.tune import run_search
from tests.tune.conftest import TINY_FIXED, interrupt_driver, tiny_study, write_study

pytestmark = pytest.mark.ray

SPACE = tiny_study(
    "resumable",  # three trials of a few seconds each; the test interrupts the second
    # scope trial: each trial at epsilon 4, no search-level bound (scope search: test_search_scope)
    privacy={"target_epsilon": 4.0, "delta": 1e-5, "scope": "trial"},
    fixed={**TINY_FIXED, "training.steps": 240, "training.eval_every": 20},
    search={
        "training.lr": {"type": "float", "low": 0.5, "high": 2.0, "log": True},
        "training.batch_size": {"type": "categorical", "choices": [32, 64]},
    },
    # seed 0: K = 3 trials (a fixed seed makes K predictable: fine for a test, NOT private)
    sampler={"type": "random", "seed": 0},
    num_samples={"distribution": "truncated_negative_binomial", "mean": 2, "eta": 1},
    scheduler={"type": "none"},  # a random number of trials: the default, stated since TINY_STUDY's is ASHA
    max_concurrent=1,
)


def test_interrupted_study_resumes_without_rerunning_or_duplicating(tmp_path):
    space_file, store_dir, store = write_study(tmp_path, SPACE)

    def one_trial_completed_and_another_runs():
        if (store_dir / "trials").exists():
            rows = store.read_trials("resumable")
            if (rows["status"] == "completed").any() and (rows["status"] == "running").any():
                return rows[rows["status"] == "completed"]
        return None

    # what Ctrl-C does: Tune saves its state and stops (once the second trial checkpointed a few passes)
    completed = interrupt_driver(
        space_file, store_dir, one_trial_completed_and_another_runs, sig=signal.SIGINT, settle_s=2.0, deadline_s=180
    )
    interrupted = store.read_trials("resumable")
    assert (interrupted["status"] != "completed").any(), "the interrupt came too late to test anything"

    summary = run_search(str(space_file), store=str(store_dir), resume=True, log=lambda _m: None)

    trials = store.read_trials("resumable")
    assert len(trials) == 3 and trials["trial_id"].is_unique
    assert (trials["status"] == "completed").all()
    for _, row in completed.iterrows():  # finished before the interrupt: not re-run
        assert trials.loc[trials["trial_id"] == row["trial_id"], "written_at"].item() == row["written_at"]
    assert (trials["epsilon"] <= 4.0 + 1e-9).all() and (trials["steps"] == 240).all()
    # scope trial: each trial releases exact scores, so no search-level (Papernot-Steinke) bound is recorded
    assert trials["search_epsilon"].isna().all() and trials["search_delta"].isna().all()
    assert summary.search_privacy is None and "Papernot-Steinke bound applies" in summary.privacy_note
    history = store.read_history("resumable")
    assert not history.duplicated(["trial_id", "step"]).any()
    for _, steps in history.groupby("trial_id")["step"]:
        assert sorted(steps) == list(range(20, 241, 20))
    saved = json.loads((store_dir / "experiments" / "resumable" / "eqdp-study.json").read_text())
    assert saved["num_trials"] == 3
