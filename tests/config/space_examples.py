"""Small search spaces shared by the schema and feasibility tests."""

import textwrap

TRAIN_SIZE = 1294  # digits: 1438 training digits minus the 10% validation split


def base(**changes):
    space = {
        "study": "unit",
        "privacy": {"target_epsilon": 8.0, "delta": 1e-5},
        "data": {"name": "digits"},
        "fixed": {"training.steps": 20},
        "search": {
            "model.name": {"type": "categorical", "choices": ["eq_resnet9", "resnet9"]},
            "model.options.order": {"type": "categorical", "choices": [2, 4], "when": {"model.name": "eq_resnet9"}},
            "model.options.layout": {
                "type": "categorical",
                "choices": [[4, 8, 16], [8, 8, 16]],
                "when": {"model.name": "eq_resnet9"},
            },
            "model.options.width": {"type": "categorical", "choices": [0.125, 0.25], "when": {"model.name": "resnet9"}},
            "training.lr": {"type": "loguniform", "low": 0.5, "high": 4.0},
            "training.batch_size": {"type": "int", "low": 64, "high": 256, "step": 64},
        },
        "num_samples": 3,
    }
    space.update(changes)
    return space


def write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


VALID_YAML = """
    study: unit
    privacy: {target_epsilon: 8.0, delta: 1.0e-5}
    data: {name: digits}
    fixed:
      training.steps: 20
    search:
      training.lr: {type: loguniform, low: 0.5, high: 4.0}
      training.batch_size: {type: categorical, choices: [64, 128]}
    num_samples: 2
"""
