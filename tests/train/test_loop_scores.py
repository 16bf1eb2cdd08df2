"""What leaves a run in budget scope `search`: noisy validation scores, the search's sigma, no training metrics."""

import re

import pytest

from eqdp_ray.config import parse_config
from eqdp_ray.privacy import PrivacyBudgetError, epsilon_spent
from eqdp_ray.train import train

TINY = {"name": "resnet9", "options": {"width": 0.125, "num_groups": 2}}


def config(**privacy):
    p = {"target_epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0, "secret_seed": 99}
    p.update(privacy)
    return parse_config(
        {
            "name": "scores",
            "data": {"name": "digits", "train_subset": 300, "test_subset": 100},
            "model": TINY,
            "privacy": p,
            "training": {"batch_size": 64, "steps": 6, "eval_every": 2, "crop_padding": 0, "physical_batch_size": 64},
        }
    )


def run(cfg):
    lines, records = [], []
    result = train(cfg, on_evaluation=lambda record, state: records.append(dict(record)), log=lines.append)
    return result, records, "\n".join(lines)


def test_search_scope_run_uses_the_given_sigma_noises_scores_and_hides_training_metrics():
    exact, exact_records, exact_log = run(config())
    noisy, records, log = run(config(noise_multiplier=3.0, score_noise=20.0, release_train_metrics=False))
    assert noisy["noise_multiplier"] == 3.0
    assert noisy["epsilon"] == pytest.approx(epsilon_spent(3.0, noisy["sample_rate"], 6, 1e-5))
    assert noisy["score_noise"] == 20.0 and noisy["score_releases"] == 3 == len(records)
    for r in records:
        assert "train_loss" not in r and "train_accuracy" not in r
    assert not re.search(r"loss \d|train acc \d", log) and "training loss/accuracy are not released" in log
    for r in noisy["history"]:
        assert "train_loss" not in r and "train_accuracy" not in r
    # the released scores carry the noise: not multiples of 1/n_val, and the final one is the last pass's
    n_val = noisy["val_size"]
    assert any(abs(r["val_accuracy"] * n_val - round(r["val_accuracy"] * n_val)) > 1e-6 for r in records)
    assert noisy["val_accuracy"] == records[-1]["val_accuracy"]
    assert noisy["best_val_accuracy"] == max(r["val_accuracy"] for r in records)
    assert noisy["not_covered_by_epsilon"] == []
    # a plain run (defaults): exact scores, said to be outside epsilon; no training metrics
    assert not any("train_loss" in r for r in exact_records) and "train acc" not in exact_log
    assert exact["not_covered_by_epsilon"] == ["validation scores (exact)"]
    assert "NOT covered by this epsilon (computed on private data, unaccounted): validation scores (exact)" in exact_log
    assert all(abs(r["val_accuracy"] * n_val - round(r["val_accuracy"] * n_val)) < 1e-9 for r in exact_records)
    assert exact["score_noise"] is None


def test_a_given_sigma_that_overspends_the_runs_target_is_refused():
    with pytest.raises(PrivacyBudgetError, match="above this run's target"):
        train(config(noise_multiplier=0.3), log=None)
