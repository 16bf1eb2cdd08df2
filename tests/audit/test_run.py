"""One-run audits of the real mechanism (single process): within the claim, and loud on every fault.

Each audit is one real training run of a tiny equivariant model on 200 digits with 800 white-box
canaries. Seeds are fixed (noise, sampling and coins), so every bound here is reproducible.
"""

import contextlib
import json

import pytest

from eqdp_ray.audit import run_audit
from eqdp_ray.config import parse_config
from eqdp_ray.data import load_dataset
from eqdp_ray.privacy import _faults, audit_from_score_sets

CANARIES = 800  # the model below has 894 trainable parameters, one coordinate per canary
# about 200 digits are kept (a per-example hash decides), less the validation split
TRAIN_SIZE = len(load_dataset("digits", None, val_size=0.1, seed=0, train_subset=200).train_y)


def audit_config(epsilon, batch_size=TRAIN_SIZE, steps=1):
    """The whole training set per step by default: q = 1; a quarter of it: q = 0.25 (where reusing
    noise across steps leaks)."""
    return parse_config(
        {
            "name": "audit-test",
            "seed": 0,
            "data": {"name": "digits", "train_subset": 200, "val_size": 0.1},
            "model": {
                "name": "eq_resnet9",
                "options": {"group": "dihedral", "order": 4, "layout": [2, 4, 4], "num_groups": 2},
            },
            "privacy": {"target_epsilon": epsilon, "delta": 1e-5, "max_grad_norm": 1.0, "secret_seed": 7},
            "training": {
                "batch_size": batch_size,
                "steps": steps,
                "crop_padding": 1,
                "lr": 0.5,
                "ema_decay": None,
                "physical_batch_size": 256,
                "eval_every": 1000,
            },
        }
    )


def audit(config, fault=None, norm_multiple=10.0, **params):
    with _faults._inject(fault, **params) if fault else contextlib.nullcontext():
        return run_audit(config, canaries=CANARIES, coin_seed=3, norm_multiple=norm_multiple, log=None)


@pytest.mark.parametrize("epsilon", [1.0, 4.0, 8.0])
def test_real_mechanism_stays_within_its_claim(epsilon, tmp_path):
    record = run_audit(audit_config(epsilon), canaries=CANARIES, coin_seed=3, output_dir=tmp_path, log=None)
    assert record["claimed_epsilon"] <= epsilon
    assert 0 <= record["epsilon_lower_bound"] <= record["claimed_epsilon"]
    if epsilon == 8.0:
        assert record["epsilon_lower_bound"] > 0.5  # the audit has power: it is not vacuously zero
    # audit.json holds what recomputes the bound; no result.json, no model: an audit is not a release
    saved = json.loads((tmp_path / "audit.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.json"]
    assert saved["kind"].startswith("audit (not a release")
    _, bound, _ = audit_from_score_sets(saved["scores"], saved["included"], confidence=0.95, delta=saved["delta"])
    assert bound.epsilon_lower_bound == saved["epsilon_lower_bound"]


def test_canaries_taken_in_batches_audit_exactly_as_all_at_once(monkeypatch):
    """About 400 canaries are sampled per step: in batches of 7 the run and its bound are the same."""
    from eqdp_ray.privacy import canaries as canaries_module

    monkeypatch.setattr(canaries_module, "CHUNK", 10**6)
    at_once = audit(audit_config(8.0))
    monkeypatch.setattr(canaries_module, "CHUNK", 7)
    batched = audit(audit_config(8.0))
    assert batched["scores"] == at_once["scores"]
    assert batched["epsilon_lower_bound"] == at_once["epsilon_lower_bound"]


def test_reusing_noise_stays_within_the_claim_only_when_fresh():
    """q = 0.25 over 8 steps: with fresh noise the bound holds; with the first draw added again at
    every step the differences between steps cancel the noise and expose the sampled canaries."""
    config = audit_config(1.0, batch_size=TRAIN_SIZE // 4, steps=8)
    fresh = audit(config)
    assert fresh["epsilon_lower_bound"] <= fresh["claimed_epsilon"]
    reused = audit(config, "reused_noise")
    assert reused["epsilon_lower_bound"] > reused["claimed_epsilon"], reused["bound_per_score"]


@pytest.mark.parametrize(
    "fault, params", [("no_noise", {}), ("noise_scale", {"factor": 0.1}), ("no_clipping", {})], ids=str
)
def test_each_fault_drives_the_bound_above_the_claim(fault, params):
    # Unclipped, the real examples' own gradients land on the canaries' coordinates too; a canary of
    # 100 C (clipped to C when clipping works) stands out of them whatever the draws.
    record = audit(audit_config(1.0), fault, norm_multiple=100.0 if fault == "no_clipping" else 10.0, **params)
    assert record["epsilon_lower_bound"] > record["claimed_epsilon"], (fault, record["bound_per_score"])


def test_faults_are_off_outside_the_test_hook():
    assert _faults._active == {}
    with pytest.raises(ValueError, match="unknown fault"):
        _faults._enable("typo")
