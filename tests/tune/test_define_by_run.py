"""Define-by-run sampling of a conditional space: only keys whose conditions hold are drawn."""

import optuna

from eqdp_ray.config.space import load_space, resolve_params, trial_config
from eqdp_ray.tune.runner import DefineByRun
from tests.config.space_examples import TRAIN_SIZE, base


def test_define_by_run_respects_conditions_and_configs_parse():
    space = load_space(base())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3), direction="maximize")
    define = DefineByRun(space)
    seen = set()
    for _ in range(20):
        trial = study.ask()
        define(trial)
        params = resolve_params(space, trial.params)
        seen.add(params["model.name"])
        eq_keys = {"model.options.order", "model.options.layout"}
        if params["model.name"] == "eq_resnet9":
            assert eq_keys <= set(params) and "model.options.width" not in params
            assert isinstance(params["model.options.layout"], tuple)  # JSON-decoded list
        else:
            assert not eq_keys & set(params) and "model.options.width" in params
        config = trial_config(space, trial.params, TRAIN_SIZE)
        assert config.training.steps == 20 and config.privacy.target_epsilon == 8.0
        assert config.device == "cpu"  # the space reserves no GPU
        study.tell(trial, 0.5)
    assert seen == {"eq_resnet9", "resnet9"}
