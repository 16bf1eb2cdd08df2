"""A Papernot-Steinke search end to end on a real local Ray: what leaves it is the best trial alone.

Random search with a random number of trials in scope `search`: its bound covers only the best trial's
configuration, score and model. The driver's output (ours and Tune's), `best` and `report` must show that
trial and the bound's statement, and neither the other trials nor how many ran.
"""

import re

import pytest
import yaml

from eqdp_ray.cli import main
from eqdp_ray.results import ResultsStore
from tests.tune.conftest import TINY_FIXED, tiny_study

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")

SPACE = tiny_study(
    "ps_e2e",
    privacy={"target_epsilon": 4.0, "delta": 1e-5, "validation_noise": 0.05},  # scope search, the default
    # a fixed sampler seed makes the secret draw reproducible (and the run NOT private, as it says): seed 5
    # draws K = 2 trials from this distribution
    sampler={"type": "random", "seed": 5},
    num_samples={"distribution": "truncated_negative_binomial", "mean": 2, "eta": 1},
    scheduler={"type": "none"},
    fixed={**TINY_FIXED, "training.steps": 4},
    search={
        "training.lr": {"type": "float", "low": 0.5, "high": 2.0, "log": True},
        "training.batch_size": {"type": "categorical", "choices": [32, 64]},
    },
)

STATEMENT = "best trial's configuration, score and model only"
#: What a count of trials or attempts looks like in our lines and in Tune's tables.
COUNTS = re.compile(r"\d+ (finished )?([Tt]rials?|attempts)\b|Number of trials|Trial status|trial attempts")


def test_a_papernot_steinke_search_releases_only_its_best_trial_and_no_count(tmp_path, local_ray, capfd):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(SPACE))
    store = str(tmp_path / "store")

    assert main(["tune", str(space_file), "--store", store]) == 0
    tuned = capfd.readouterr()
    trials = ResultsStore(store).read_trials("ps_e2e")
    assert len(trials) == 2, "precondition: seed 5 draws two trials"  # so there is another trial to hide
    assert set(trials["status"]) == {"completed"} and (trials["search_method"] == "papernot_steinke").all()
    ranked = trials.sort_values(["best_val_accuracy", "trial_id"], ascending=[False, True])
    best, other = ranked["trial_id"].iloc[0], ranked["trial_id"].iloc[1]

    driver = tuned.out + tuned.err  # everything the search printed, Tune's console output included
    assert best in driver and STATEMENT in driver
    assert other not in driver, driver[-3000:]
    assert not COUNTS.search(driver), COUNTS.search(driver)

    assert main(["best", "--store", store, "--study", "ps_e2e"]) == 0
    shown = capfd.readouterr()
    assert best in shown.out and other not in shown.out + shown.err
    assert STATEMENT in shown.err and not COUNTS.search(shown.out + shown.err)

    out = tmp_path / "report"
    assert main(["report", "--store", store, "--study", "ps_e2e", "--out", str(out)]) == 0
    capfd.readouterr()
    for page in (out / "report.md", out / "index.html"):
        text = page.read_text()
        assert best in text and STATEMENT in text, page
        assert other not in text and not COUNTS.search(text), page
