"""The audit on 2 Ray Train workers: the same bound as one process, and a rank without noise is caught."""

import json

import pytest

from eqdp_ray.audit import run_audit
from eqdp_ray.privacy import _faults
from tests.audit.test_run import CANARIES, audit_config

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")


def test_two_workers_audit_like_one_process_and_catch_a_rank_without_noise(tmp_path, monkeypatch):
    config = audit_config(1.0)
    single = run_audit(config, canaries=CANARIES, coin_seed=3, log=None)

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        double = run_audit(config, canaries=CANARIES, coin_seed=3, workers=2, output_dir=tmp_path / "ok", log=None)
    finally:
        ray.shutdown()
    # both ranks applied the same update, so their views are one test, and the run is the same mechanism
    assert list(double["scores"]) == ["sum@rank0", "abs_diff@rank0"] and double["ranks_diverged"] is None
    assert double["claimed_epsilon"] == pytest.approx(single["claimed_epsilon"])
    assert double["epsilon_lower_bound"] == pytest.approx(single["epsilon_lower_bound"], abs=0.2)
    assert double["epsilon_lower_bound"] <= double["claimed_epsilon"]
    assert json.loads((tmp_path / "ok" / "audit.json").read_text())["workers"] == 2

    # The fault lives in the workers' processes: a set-up hook that only this test installs
    # (a lambda, so that Ray ships it by value).
    hook = lambda: _faults._enable("noise_missing_on_rank", rank=1)  # noqa: E731
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, runtime_env={"worker_process_setup_hook": hook})
    try:
        broken = run_audit(config, canaries=CANARIES, coin_seed=3, workers=2, output_dir=tmp_path / "bad", log=None)
    finally:
        ray.shutdown()
    assert broken["ranks_diverged"] is not None and "rank1" in broken["winning_score"]
    assert broken["epsilon_lower_bound"] > broken["claimed_epsilon"], broken["bound_per_score"]
