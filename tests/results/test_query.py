"""Queries behind `best`, `results` and the report: the Pareto front and the group label."""

import json
import math

import pandas as pd

from eqdp_ray.results.query import group_label, pareto_front


def test_pareto_front_of_several_objectives_best_first():
    rows = pd.DataFrame(
        [
            {"id": 1, "acc": 0.9, "params": 100},
            {"id": 2, "acc": 0.8, "params": 10},
            {"id": 3, "acc": 0.7, "params": 50},  # dominated by 2
            {"id": 4, "acc": 0.9, "params": 200},  # dominated by 1 (as accurate, larger)
            {"id": 5, "acc": math.nan, "params": 1},  # missing: ignored
            {"id": 6, "acc": None, "params": 1},
        ]
    )
    assert list(pareto_front(rows, [("acc", "max"), ("params", "min")])["id"]) == [1, 2]
    # the report's step line: smallest model first
    assert list(pareto_front(rows, [("params", "min"), ("acc", "max")])["id"]) == [2, 1]
    assert pareto_front(rows, [("missing", "max")]).empty


def test_group_label_prefers_the_recorded_group():
    assert group_label({"group": "C8"}) == "C8"
    assert group_label({"group": ""}) is None  # recorded: no symmetry group (a baseline)


def test_group_label_without_recorded_group_follows_the_model_defaults():
    def row(options, name="eq_resnet9"):  # as the store returns it: the exact config in config_json
        return {"config_json": json.dumps({"model": {"name": name, "options": options}})}

    # eq_resnet9 restricts its last stage by default (restrict: halved): D4 -> D2
    assert group_label(row({"group": "dihedral", "order": 4})) == "D4->D2"
    assert group_label(row({"group": "dihedral", "order": 4, "restrict": "halved"})) == "D4->D2"
    assert group_label(row({"group": "cyclic", "order": 8, "restrict": None})) == "C8"
    assert group_label(row({"width": 0.25}, name="resnet9")) is None
    assert group_label(row({"group": "dihedral", "order": 3, "restrict": "halved"})) is None  # invalid: no label
