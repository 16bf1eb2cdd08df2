"""`eqdp-ray best / results` end to end: real Parquet stores, the real CLI entry point."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eqdp_ray.cli import main
from eqdp_ray.config import config_to_dict, load_config
from eqdp_ray.results import NoResults, ResultsStore, ResultsStoreError, best_configs, emit_config, list_results

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
REPO = Path(__file__).resolve().parents[2]


def run_config(
    model: str = "eq_resnet9",
    group: str | None = "dihedral",
    order: int | None = 4,
    lr: float = 1.0,
    batch_size: int = 128,
    clip: float = 1.0,
    target_epsilon: float = 8.0,
    **extra_options: Any,
) -> dict[str, Any]:
    """A nested trial config as the tuner records it (config_to_dict of a RunConfig, partly)."""
    options: dict[str, Any] = {"layout": [8, 16, 16], "num_groups": 2, **extra_options}
    if group is not None:
        options.update(group=group, order=order)
    if model == "resnet9":
        options = {"width": 0.25, "num_groups": 2}
    return {
        "name": "quickstart",
        "seed": 0,
        "device": "cpu",
        "data": {"name": "digits", "val_size": 0.1},
        "model": {"name": model, "options": options},
        "privacy": {
            "target_epsilon": target_epsilon,
            "delta": 1e-5,
            "accountant": "rdp",
            "max_grad_norm": clip,
            "secret_seed": 1234,
        },
        "training": {
            "batch_size": batch_size,
            "epochs": 15.0,
            "lr": lr,
            "augmult": 1,
            "crop_padding": 1,
            "ema_decay": 0.99,
            "physical_batch_size": 256,
        },
    }


def trial_row(
    study: str,
    trial_id: str,
    acc: float | None,
    *,
    status: str = "completed",
    minute: int = 0,
    config: dict[str, Any] | None = None,
    **values: Any,
) -> dict[str, Any]:
    """A realistic trial row as eqdp_ray.tune writes it."""
    config = config or run_config()
    eps = config["privacy"]["target_epsilon"]
    row: dict[str, Any] = {
        "study": study, "trial_id": trial_id, "status": status, "config": config,
        "sigma": 1.3, "sample_rate": config["training"]["batch_size"] / 1294, "steps": 150,
        "epsilon": eps * 0.99, "target_epsilon": eps, "delta": 1e-5, "accountant": "rdp",
        "best_val_accuracy": acc, "final_val_accuracy": None if acc is None else acc - 0.01,
        "test_accuracy": None if acc is None else acc - 0.02, "num_params": 20000, "wall_time_s": 42.0,
        "device_seconds": 40.0, "started_at": T0 + dt.timedelta(minutes=minute),
        "finished_at": T0 + dt.timedelta(minutes=minute + 3), "search_mode": "tpe",
    }  # fmt: skip
    row.update(values)
    return row


def build_store(root: Path) -> ResultsStore:
    """Two studies: 'digits8' (eps 8, mixed models/statuses) and 'digits1' (eps 1, a private search)."""
    store = ResultsStore(str(root))
    store.write_trials([
        trial_row("digits8", "t00", 0.81, minute=0, config=run_config(lr=2.0, batch_size=256), num_params=31000),
        trial_row("digits8", "t01", 0.93, minute=1, config=run_config("eq_resnet9", "cyclic", 8, lr=1.0),
                  num_params=45000),
        trial_row("digits8", "t02", 0.62, minute=2, config=run_config("resnet9", None, lr=0.5), num_params=150000),
        trial_row("digits8", "t03", 0.99, minute=3, status="failed", config=run_config(lr=4.0)),
        trial_row("digits8", "t04", 0.97, minute=4, status="running"),
        trial_row("digits8", "t05", 0.88, minute=5, status="stopped_early", config=run_config(lr=0.7, batch_size=64)),
        trial_row("digits8", "t06", None, minute=6, config=run_config(lr=3.0)),
    ])  # fmt: skip
    # a later write supersedes: t00 finished better than first recorded
    store.write_trial(
        trial_row("digits8", "t00", 0.85, minute=0, config=run_config(lr=2.0, batch_size=256), num_params=31000)
    )
    for i, acc in enumerate([0.55, 0.71, 0.64]):
        store.write_trial(
            trial_row(
                "digits1",
                f"p{i}",
                acc,
                minute=10 + i,
                config=run_config(lr=1.0 + i, target_epsilon=1.0),
                search_epsilon=2.6,
                search_delta=2e-5,
                search_mode="random_count",
            )
        )
    store.write_history([
        {"study": "digits8", "trial_id": "t01", "epoch": e, "step": 10 * e, "val_accuracy": 0.5 + 0.1 * e,
         "epsilon": 2.0 * e, "train_loss": 2.0 - 0.3 * e} for e in range(1, 5)
    ])  # fmt: skip
    return store


@pytest.fixture()
def store(tmp_path: Path) -> ResultsStore:
    return build_store(tmp_path / "store")


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.strip().splitlines()]
    assert set(lines[1].replace(" ", "")) == {"-"}, "second line is the header rule"
    return [line.split() for line in lines[2:]]


# ------------------------------------------------------------------------------ best


def test_best_table_ranks_finished_trials_with_readable_columns(store, capsys):
    code, out, err = cli(capsys, "best", "--store", store.uri)
    assert code == 0, err
    header = out.splitlines()[0].split()
    assert header == [
        "rank",
        "study",
        "trial_id",
        "status",
        "model",
        "group",
        "best_val_accuracy",
        "test_accuracy",
        "epsilon",
        "target_epsilon",
        "search_epsilon",
        "budget_scope",
        "sigma",
        "sample_rate",
        "steps",
        "num_params",
        "wall_time_s",
    ]
    assert "NOT covered by a search-level bound" in err  # rows without a scope: the per-trial guarantee only
    rows = table_rows(out)
    # failed t03 (0.99) and running t04 (0.97) are not ranked; t06 has no accuracy; t00 was superseded
    assert [r[2] for r in rows] == ["t01", "t05", "t00", "p1", "p2"]
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    first = dict(zip(header, rows[0]))
    assert first["study"] == "digits8" and first["status"] == "completed"
    assert first["model"] == "eq_resnet9" and first["group"] == "C8->C4"  # the model default restrict: halved
    assert first["best_val_accuracy"] == "0.9300" and first["test_accuracy"] == "0.9100"
    assert first["num_params"] == "45000" and first["steps"] == "150"
    assert dict(zip(header, rows[1]))["group"] == "D4->D2"
    assert "config_json" not in out  # the table keeps to readable columns
    assert all(line.startswith("[eqdp-ray] privacy: ") for line in err.splitlines())  # nothing but what epsilon covers


def test_best_table_shows_baselines_without_group(store, capsys):
    code, out, _ = cli(capsys, "best", "--store", store.uri, "--study", "digits8", "--top", "10")
    assert code == 0
    rows = table_rows(out)
    assert [r[2] for r in rows] == ["t01", "t05", "t00", "t02"]
    assert rows[-1][4:6] == ["resnet9", "-"]


def test_best_json_is_full_rows_in_rank_order(store, capsys):
    code, out, _ = cli(capsys, "best", "--store", store.uri, "--format", "json", "--top", "3")
    assert code == 0
    rows = json.loads(out)
    assert [r["trial_id"] for r in rows] == ["t01", "t05", "t00"]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["best_val_accuracy"] == pytest.approx(0.93)
    assert rows[0]["config.model.options.group"] == "cyclic"
    assert json.loads(rows[0]["config_json"])["model"]["options"]["order"] == 8
    assert rows[2]["best_val_accuracy"] == pytest.approx(0.85)  # the later write of t00


def test_best_csv_is_full_rows_in_rank_order(store, capsys):
    code, out, _ = cli(capsys, "best", "--store", store.uri, "--format", "csv", "--study", "digits1")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["trial_id"] for r in rows] == ["p1", "p2", "p0"]
    assert [float(r["best_val_accuracy"]) for r in rows] == [0.71, 0.64, 0.55]
    assert rows[0]["config.training.lr"] == "2.0" and rows[0]["search_epsilon"] == "2.6"


def test_best_epsilon_filter(store, capsys):
    code, out, _ = cli(capsys, "best", "--store", store.uri, "--epsilon", "1", "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert [r["trial_id"] for r in rows] == ["p1", "p2", "p0"]
    assert {r["target_epsilon"] for r in rows} == {1.0}
    code, out, _ = cli(capsys, "best", "--store", store.uri, "--epsilon", "8", "--format", "json")
    assert [r["trial_id"] for r in json.loads(out)] == ["t01", "t05", "t00", "t02"]


def test_best_epsilon_without_match_is_no_results(store, capsys):
    code, out, err = cli(capsys, "best", "--store", store.uri, "--epsilon", "3")
    assert code == 1 and out == ""
    assert "no results" in err and "target epsilons present: 1, 8" in err
    assert "Traceback" not in err


def test_best_cost_metric_ranks_ascending(store, capsys):
    code, out, _ = cli(capsys, "best", "--store", store.uri, "--metric", "num_params", "--format", "json", "--top", "2")
    assert code == 0
    assert [r["num_params"] for r in json.loads(out)] == [20000, 20000]
    code, out, _ = cli(
        capsys,
        "best",
        "--store",
        store.uri,
        "--metric",
        "num_params",
        "--mode",
        "max",
        "--format",
        "json",
        "--top",
        "1",
    )
    assert json.loads(out)[0]["trial_id"] == "t02"


def test_emit_config_writes_the_winners_config_for_train(store, capsys, tmp_path):
    winner_config = run_config("eq_resnet9", "cyclic", 8, lr=1.0)
    path = tmp_path / "out" / "best.yaml"
    code, out, err = cli(capsys, "best", "--store", store.uri, "--emit-config", str(path))
    assert code == 0, err
    assert table_rows(out)[0][2] == "t01"
    assert "t01" in err and str(path) in err

    loaded = config_to_dict(load_config(path))  # what `eqdp-ray train PATH` does first
    assert loaded["privacy"]["secret_seed"] is None and winner_config["privacy"]["secret_seed"] == 1234
    for section, values in winner_config.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if (section, key) != ("privacy", "secret_seed"):
                    assert loaded[section][key] == value, f"{section}.{key}"
        else:
            assert loaded[section] == values, section
    assert "secret_seed: null" in path.read_text()


def test_emit_config_drops_keys_the_run_config_does_not_know(tmp_path, capsys):
    store = ResultsStore(str(tmp_path / "s"))
    config = run_config(lr=1.5)
    config["tune"] = {"num_samples": 6}
    config["training"]["sample_rate"] = 0.1  # a search-only knob
    store.write_trial(trial_row("x", "a", 0.9, config=config))
    path = tmp_path / "a.yaml"
    code, _, err = cli(capsys, "best", "--store", store.uri, "--emit-config", str(path))
    assert code == 0, err
    assert "tune" in err and "training.sample_rate" in err
    loaded = config_to_dict(load_config(path))
    assert loaded["training"]["lr"] == 1.5 and loaded["privacy"]["secret_seed"] is None

    emitted = emit_config(best_configs(store).iloc[0])
    assert emitted == loaded
    assert "tune" not in emitted and "sample_rate" not in emitted["training"]


def test_emit_config_of_an_invalid_config_is_a_clear_error(tmp_path, capsys):
    store = ResultsStore(str(tmp_path / "s"))
    config = run_config()
    config["training"]["lr"] = -1.0
    store.write_trial(trial_row("x", "a", 0.9, config=config))
    code, out, err = cli(capsys, "best", "--store", store.uri, "--emit-config", str(tmp_path / "a.yaml"))
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("eqdp-ray: error: the config of trial 'a'")
    assert "training.lr" in err and "Traceback" not in err
    assert not (tmp_path / "a.yaml").exists()


def test_emit_config_refuses_an_existing_file_unless_force(store, capsys, tmp_path):
    """It used to replace the file silently: a hand-edited config was lost."""
    path = tmp_path / "mine.yaml"
    path.write_text("# my edited config\n")
    code, out, err = cli(capsys, "best", "--store", store.uri, "--emit-config", str(path))
    assert code == 2 and out == "", err  # refused before the query: no table either
    assert (
        err
        == f"eqdp-ray: error: --emit-config {path} already exists; pass another path, or add --force to replace it\n"
    )
    assert path.read_text() == "# my edited config\n"

    code, _, err = cli(capsys, "best", "--store", store.uri, "--emit-config", str(path), "--force")
    assert code == 0, err
    assert load_config(path).privacy.secret_seed is None and "t01" in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml", "store"]  # no temporary file left


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("a-dir", "--emit-config {tmp}/a-dir is a directory; pass a file path, e.g. {tmp}/a-dir/best.yaml"),
        (
            "a-file/best.yaml",
            "--emit-config {tmp}/a-file/best.yaml: {tmp}/a-file is a file, not a directory; pass another path",
        ),
    ],
)
def test_emit_config_to_a_path_of_the_wrong_kind_is_one_clear_line(store, capsys, tmp_path, target, message):
    """Both used to print the table and then a raw errno line ([Errno 21] Is a directory)."""
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-file").write_text("keep")
    code, out, err = cli(capsys, "best", "--store", store.uri, "--emit-config", str(tmp_path / target))
    assert code == 2 and out == ""
    assert err == "eqdp-ray: error: " + message.format(tmp=tmp_path) + "\n"
    assert (tmp_path / "a-file").read_text() == "keep" and list((tmp_path / "a-dir").iterdir()) == []


def test_emit_config_to_an_unwritable_place_is_one_clear_line(store, capsys):
    code, out, err = cli(capsys, "best", "--store", store.uri, "--emit-config", "/proc/eqdp-ray-best.yaml")
    assert code == 2 and out == ""
    assert err.startswith("eqdp-ray: error: --emit-config /proc/eqdp-ray-best.yaml: /proc cannot be written (")
    assert err.endswith("); pass a writable directory\n")


_KILLED_WRITERS = """
import os, resource, signal, sys
from eqdp_ray.cli import main  # imported once; each writer below is a fork of this process
for argv in (line.split("\\t") for line in sys.argv[1:]):
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the kernel's default is to kill
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))  # no file may grow past 300 bytes
        os._exit(main(argv))
    print("exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_emit_config_killed_mid_write_leaves_no_half_config(store, tmp_path):
    """The old code wrote the path in place: a kill left the first 300 bytes of a config there."""
    import signal

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "PYTHONUNBUFFERED": "1",
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    fresh, kept = tmp_path / "fresh.yaml", tmp_path / "kept.yaml"
    kept.write_text("# the config I had\n")
    runs = ["\t".join(["best", "--store", store.uri, "--emit-config", str(fresh)])]
    runs.append("\t".join(["best", "--store", store.uri, "--emit-config", str(kept), "--force"]))
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITERS, *runs], capture_output=True, text=True, timeout=180, env=env
    )
    assert proc.returncode == 0, proc.stderr
    statuses = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("exit ")]
    assert statuses == [-signal.SIGXFSZ, -signal.SIGXFSZ], proc.stdout + proc.stderr  # both killed while writing
    assert not fresh.exists()
    assert kept.read_text() == "# the config I had\n"
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert [name.split(".")[1] for name in leftovers] == ["fresh", "kept"]  # the partial temporaries, hidden
    assert all(name.endswith(".tmp") for name in leftovers)


def test_empty_store_is_no_results_exit_1(tmp_path, capsys):
    code, out, err = cli(capsys, "best", "--store", str(tmp_path))
    assert code == 1 and out == ""
    assert err.startswith("eqdp-ray: no results:") and "holds no trials" in err
    assert "Traceback" not in err
    code, out, err = cli(capsys, "results", "--store", str(tmp_path))
    assert code == 1 and "holds no trials" in err


@pytest.mark.parametrize("command", ["best", "results", "report"])
def test_store_that_is_missing_or_a_file_says_so(tmp_path, capsys, command):
    """Both used to end in "holds no trials", exit 1, as if the path were right."""
    (tmp_path / "file").write_text("keep")
    extra = ["--out", str(tmp_path / "out")] if command == "report" else []
    for uri, what in ((tmp_path / "missing", "does not exist"), (tmp_path / "file", "is a file")):
        code, out, err = cli(capsys, command, "--store", str(uri), *extra)
        assert code == 2 and out == "", err
        assert err.startswith("eqdp-ray: error: the results store") and what in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and (tmp_path / "file").read_text() == "keep"


def test_study_without_finished_trials_is_no_results(tmp_path, capsys):
    store = ResultsStore(str(tmp_path / "s"))
    store.write_trial(trial_row("x", "a", None, status="running"))
    store.write_trial(trial_row("x", "b", 0.5, status="failed"))
    code, out, err = cli(capsys, "best", "--store", store.uri, "--study", "x")
    assert code == 1 and out == ""
    assert "study 'x'" in err and "1 failed, 1 running" in err


def test_unknown_metric_is_exit_2_in_one_line(store, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for uri in (store.uri, str(tmp_path / "empty")):  # a typo is a typo, even on an empty store
        code, out, err = cli(capsys, "best", "--store", uri, "--metric", "val_acc")
        assert code == 2 and out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("eqdp-ray: error: metric 'val_acc' is unknown; choose one of: best_val_accuracy")


def test_unknown_study_is_exit_2(store, capsys):
    code, _, err = cli(capsys, "best", "--store", store.uri, "--study", "digits9")
    assert code == 2
    assert err.strip() == "eqdp-ray: error: unknown study 'digits9'; known studies: digits1, digits8"


def test_bad_arguments_are_rejected_by_the_parser(store, capsys):
    for argv in (["--top", "0"], ["--epsilon", "-1"], ["--format", "xml"]):
        with pytest.raises(SystemExit) as exc:
            main(["best", "--store", store.uri, *argv])
        assert exc.value.code == 2
    capsys.readouterr()


def test_corrupt_and_foreign_files_are_reported_and_skipped(store, capsys):
    study_dir = os.path.join(store.trials_path, "study=digits8")
    bad = os.path.join(study_dir, "zz-broken.parquet")
    with open(bad, "wb") as fh:
        fh.write(b"PAR1 definitely not parquet" * 20)
    foreign = os.path.join(store.trials_path, "someone-elses.parquet")
    pq.write_table(pa.table({"x": [1, 2]}), foreign)

    code, out, err = cli(capsys, "best", "--store", store.uri, "--top", "2")
    assert code == 0
    assert [r[2] for r in table_rows(out)] == ["t01", "t05"]
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 2, err
    assert any(line.startswith(f"skipped {bad}: not a readable Parquet file") for line in skipped)
    assert any(line.startswith(f"skipped {foreign}: Parquet file without the study/trial_id") for line in skipped)
    assert "Warning" not in err  # reported once, as lines, not as Python warnings

    code, out, err = cli(capsys, "results", "--store", store.uri)
    assert code == 0 and "digits8" in out and f"skipped {bad}" in err
    assert os.path.exists(bad) and os.path.exists(foreign)  # never deleted


def test_a_file_with_text_in_a_metric_column_is_skipped_and_the_study_still_answers(store, capsys):
    """Its string best_val_accuracy used to win the merge: `best` said the metric was not numeric for the whole
    store, and `results` ended in a traceback (could not convert string to float)."""
    foreign = os.path.join(store.trials_path, "study=digits8", "exported-by-hand.parquet")
    table = pa.table({"study": ["digits8"], "trial_id": ["zz"], "status": ["completed"], "best_val_accuracy": ["high"]})
    pq.write_table(table, foreign)
    before = Path(foreign).read_bytes()

    for argv, first in (
        (["best", "--top", "2"], ["1", "digits8", "t01"]),
        (["best", "--study", "digits8", "--top", "2"], ["1", "digits8", "t01"]),
        (["results", "--study", "digits8"], ["t00", "completed"]),
        (["results"], ["digits1", "3"]),
    ):
        code, out, err = cli(capsys, *argv, "--store", store.uri)
        assert code == 0, err
        assert table_rows(out)[0][: len(first)] == first
        assert "zz" not in out and "Traceback" not in err
        skipped = [line for line in err.splitlines() if "exported-by-hand" in line]
        assert skipped == [
            f"skipped {foreign}: column 'best_val_accuracy' is string, not double as this store writes it, so it "
            "cannot be read with the other files; fix the column's type in that file or move the file out of the store"
        ], err
    assert Path(foreign).read_bytes() == before  # left as it was


_KILLED_STORE_WRITER = """
import os, resource, signal, sys
from eqdp_ray.results import ResultsStore
rows = [
    {"study": "digits8", "trial_id": f"big{i}", "status": "completed", "best_val_accuracy": 0.999,
     "config": {"blob": os.urandom(64).hex()}}
    for i in range(2000)
]
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the kernel's default is to kill
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))  # the batch's file outgrows this: killed mid-write
ResultsStore(sys.argv[1]).write_trials(rows)
"""


def test_temporary_files_of_killed_writers_are_never_read_and_noted_once_old(store, capsys):
    """A writer killed mid-write leaves its hidden temporary file; `best`/`results` answer from the rest, and
    once it is old enough to be no write in flight, say in one line that it is not read (it is never deleted)."""
    import signal

    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", _KILLED_STORE_WRITER, store.uri], capture_output=True, env=env)
    assert proc.returncode == -signal.SIGXFSZ, proc.stderr  # killed while writing its file
    study_dir = Path(store.trials_path) / "study=digits8"
    partial = [p for p in study_dir.iterdir() if p.name.endswith(".tmp")]
    assert len(partial) == 1 and partial[0].name.startswith(".batch-") and 0 < partial[0].stat().st_size <= 8192
    # a whole Parquet file under a temporary name (another tool's upload in flight): not read either
    complete = study_dir / "batch-upload.parquet.tmp"
    pq.write_table(pa.table({"study": ["digits8"], "trial_id": ["zz"], "status": ["completed"],
                             "best_val_accuracy": [1.0]}), complete)  # fmt: skip

    for argv, first in ((["best"], "t01"), (["results", "--study", "digits8"], "t00")):
        code, out, err = cli(capsys, *argv, "--store", store.uri)
        assert code == 0, err
        rows = table_rows(out)
        assert first in rows[0] and not any("big" in c or c == "zz" for r in rows for c in r)
        assert "skipped" not in err and "note" not in err  # young: may be a write in flight, so not a leftover

    old = time.time() - 3600
    for path in (partial[0], complete):
        os.utime(path, (old, old))
    code, out, err = cli(capsys, "best", "--store", store.uri, "--top", "1")
    assert code == 0 and table_rows(out)[0][2] == "t01", err
    notes = [line for line in err.splitlines() if "note" in line]
    assert notes == [
        f"[eqdp-ray] note: not read: 2 temporary files left by interrupted writes (e.g. {partial[0]}); their rows "
        "were never recorded, and they can be deleted once no eqdp-ray process writes to this store"
    ]
    complete.unlink()
    code, _, err = cli(capsys, "results", "--store", store.uri)
    assert code == 0 and f"1 temporary file left by an interrupted write ({partial[0]}); its rows" in err
    assert partial[0].exists()  # never deleted by the store


# ------------------------------------------------------------------------------ results


def test_results_lists_studies(store, capsys):
    code, out, _ = cli(capsys, "results", "--store", store.uri)
    assert code == 0
    header, *_ = out.splitlines()
    assert header.split()[:6] == ["study", "n_trials", "n_completed", "n_stopped_early", "n_failed", "n_running"]
    rows = table_rows(out)
    assert [r[:6] for r in rows] == [["digits1", "3", "3", "0", "0", "0"], ["digits8", "7", "4", "1", "1", "1"]]
    assert rows[1][6] == "0.9300"  # best over finished trials (the failed 0.99 does not count)


def test_results_lists_a_studys_trials_with_filters(store, capsys):
    code, out, _ = cli(capsys, "results", "--store", store.uri, "--study", "digits8")
    assert code == 0
    assert [r[0] for r in table_rows(out)] == ["t00", "t01", "t02", "t03", "t04", "t05", "t06"]

    code, out, _ = cli(capsys, "results", "--store", store.uri, "--study", "digits8", "--status", "failed")
    rows = table_rows(out)
    assert [r[:2] for r in rows] == [["t03", "failed"]]

    code, out, _ = cli(capsys, "results", "--store", store.uri, "--status", "running")
    assert [r[0] for r in table_rows(out)] == ["digits8"]
    code, out, _ = cli(capsys, "results", "--store", store.uri, "--epsilon", "1", "--format", "json")
    assert [r["study"] for r in json.loads(out)] == ["digits1"]

    code, out, err = cli(capsys, "results", "--store", store.uri, "--study", "digits1", "--status", "failed")
    assert code == 1 and "study 'digits1' has no trials matching status=failed" in err


def test_results_of_a_study_says_why_trials_failed_or_were_refused(store, capsys):
    """The rows carried the reason (tune writes `error`), but the table had no column for it."""
    refused = "refused: the search budget has no room for this trial"
    store.write_trials([
        trial_row("digits8", "t03", None, minute=3, status="failed", error="RuntimeError: worker died"),
        trial_row("digits8", "t07", None, minute=7, status="failed", error=refused),
    ])  # fmt: skip
    code, out, err = cli(capsys, "results", "--store", store.uri, "--study", "digits8")
    assert code == 0, err
    header = out.splitlines()[0].split()
    assert header[-1] == "error"
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert lines["t03"].endswith("RuntimeError: worker died")
    assert lines["t07"].endswith("refused: the search budget has no roo...")  # cut at 40; json/csv: whole
    assert lines["t01"].endswith(" -")
    code, out, _ = cli(capsys, "results", "--store", store.uri, "--study", "digits8", "--format", "json")
    assert {r["trial_id"]: r["error"] for r in json.loads(out)}["t07"] == refused

    code, out, _ = cli(capsys, "results", "--store", store.uri, "--study", "digits1")  # no trial failed there
    assert code == 0 and "error" not in out.splitlines()[0].split()


def test_results_csv_of_a_study_has_full_rows(store, capsys):
    code, out, _ = cli(capsys, "results", "--store", store.uri, "--study", "digits1", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["trial_id"] for r in rows] == ["p0", "p1", "p2"]
    assert "config.model.options.layout" in rows[0] and rows[0]["config.model.options.layout"] == "[8, 16, 16]"


# ------------------------------------------------------------------------------ API


def test_python_api_matches_the_cli(store):
    top = best_configs(store.uri, epsilon=8.0, top=2)
    assert top["trial_id"].tolist() == ["t01", "t05"]
    assert list_results(store)["study"].tolist() == ["digits1", "digits8"]
    assert list_results(store, study="digits8", status="stopped_early")["trial_id"].tolist() == ["t05"]
    with pytest.raises(NoResults):
        best_configs(store, epsilon=2.0)
    with pytest.raises(ResultsStoreError, match="metric"):
        best_configs(store, metric="nope")
    config = emit_config(top.iloc[0])
    assert config["model"]["options"] == {"layout": [8, 16, 16], "num_groups": 2, "group": "cyclic", "order": 8}


def test_module_entry_point_in_a_subprocess(store):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "eqdp_ray.cli", "best", "--store", store.uri, "--format", "json", "--top", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["trial_id"] for r in json.loads(proc.stdout)] == ["t01"]
    assert proc.stderr == ""


def test_cli_constants_mirror_the_store():
    """The CLI module avoids importing pyarrow at start-up, so it repeats the statuses: keep them equal."""
    from eqdp_ray.results import STATUSES
    from eqdp_ray.results import cli as results_cli

    assert results_cli.STATUS_CHOICES == STATUSES


# ------------------------------------------------------------------------------ Papernot-Steinke studies


def ps_plan_json() -> str:
    """The real calibration of a scope-search random-count (Papernot-Steinke) study, as its ledger stores it."""
    from eqdp_ray.config.space import load_space
    from eqdp_ray.tune.budget import plan_study_budget

    space = load_space({
        "study": "psx", "privacy": {"target_epsilon": 8.0, "delta": 1e-5, "scope": "search", "validation_noise": 0.05},
        "data": {"name": "digits"}, "fixed": {"training.steps": 2},
        "search": {"training.batch_size": {"type": "categorical", "choices": [32, 64]}},
        "sampler": {"type": "random"}, "scheduler": {"type": "none"},
        "num_samples": {"distribution": "truncated_negative_binomial", "mean": 3, "eta": 1},
    })  # fmt: skip
    plan = plan_study_budget(space, 1294, 144).plan
    assert plan.method == "papernot_steinke"
    return json.dumps(plan.to_dict())


def add_ps_study(store: ResultsStore) -> None:
    """Study 'psx': four trials of a Papernot-Steinke search in scope search, and its ledger's plan row."""
    store.write_trials([
        trial_row("psx", f"s{i}", acc, minute=20 + i, search_epsilon=7.9, search_delta=1e-5,
                  search_mode="random_count", budget_scope="search")
        for i, acc in enumerate([0.60, 0.95, 0.70, 0.90])
    ])  # fmt: skip
    store.write_ledger([
        {"study": "psx", "trial_id": "(study)", "attempt": 0, "event": "plan", "timestamp": T0,
         "plan_json": ps_plan_json()}
    ])  # fmt: skip


def test_best_of_a_papernot_steinke_study_shows_only_the_best_and_what_is_covered(store, capsys):
    add_ps_study(store)
    code, out, err = cli(capsys, "best", "--store", store.uri, "--study", "psx")
    assert code == 0, err
    rows = table_rows(out)
    assert [r[:3] for r in rows] == [["1", "psx", "s1"]]  # the best alone: the one output the bound covers
    assert "best trial's configuration, score and model only" in err and "the number of trials or attempts" in err
    assert "attempts in the ledger" not in err and "whole search" not in err and "4 trial" not in err
    # across studies: the others keep their top rows, psx contributes only its best, ranks have no gaps
    code, out, err = cli(capsys, "best", "--store", store.uri)
    rows = table_rows(out)
    assert [r[2] for r in rows] == ["s1", "t01", "t05", "t00", "p1"] and [r[0] for r in rows] == list("12345")


def test_best_top_k_of_a_papernot_steinke_study_says_the_rest_is_not_covered(store, capsys):
    add_ps_study(store)
    code, out, err = cli(capsys, "best", "--store", store.uri, "--study", "psx", "--top", "3")
    assert code == 0, err
    assert [r[2] for r in table_rows(out)] == ["s1", "s3", "s2"]
    assert "psx: the 2 rows after its best trial are NOT covered by its Papernot-Steinke bound" in err
    code, out, err = cli(capsys, "best", "--store", store.uri, "--study", "psx", "--top", "2")
    assert "psx: the 1 row after its best trial is NOT covered by its Papernot-Steinke bound" in err
    code, out, err = cli(capsys, "best", "--store", store.uri, "--study", "psx", "--top", "1")
    assert len(table_rows(out)) == 1 and "after its best trial" not in err


def test_scope_trial_random_count_gets_no_papernot_steinke_line(store, capsys):
    """Scope trial (here rows without a scope, written with a search_epsilon): exact scores left every trial."""
    store.write_trial(
        trial_row("digits1", "p9", 0.5, minute=19, config=run_config(target_epsilon=1.0), search_mode="random_count",
                  budget_scope="trial")
    )  # fmt: skip
    code, out, err = cli(capsys, "best", "--store", store.uri, "--study", "digits1")
    assert code == 0, err
    assert "NOT covered by a search-level bound" in err and "Papernot-Steinke" not in err
    assert len(table_rows(out)) == 4  # not a best-only study: the default top 5 applies


def test_an_unknown_storage_scheme_is_one_clear_error(capsys):
    from eqdp_ray.cli import main

    assert main(["best", "--store", "foo://bar"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eqdp-ray: error: ") and "Unknown storage scheme 'foo'" in err and "Traceback" not in err


def test_results_of_a_papernot_steinke_study_says_its_rows_and_counts_are_for_the_searcher_only(store, capsys):
    """`results` is the searcher's tool: it lists every trial, and says on stderr that they are not covered."""
    add_ps_study(store)
    for fmt in ("table", "json"):
        code, out, err = cli(capsys, "results", "--store", store.uri, "--study", "psx", "--format", fmt)
        assert code == 0, err
        assert all(t in out for t in ("s0", "s1", "s2", "s3"))
        assert "psx: these rows and their number are NOT covered by the search's epsilon: for the searcher only" in err
    # the study listing counts psx's trials: said once, for psx only
    code, out, err = cli(capsys, "results", "--store", store.uri)
    assert code == 0, err
    notes = [line for line in err.splitlines() if "for the searcher only" in line]
    assert len(notes) == 1 and notes[0].startswith("[eqdp-ray] privacy: psx: its trial counts are NOT covered")
    code, out, err = cli(capsys, "results", "--store", store.uri, "--study", "digits8")
    assert code == 0 and "for the searcher only" not in err


def test_no_results_in_a_papernot_steinke_study_states_no_trial_counts(store, capsys):
    """Nothing finished: the message says so without how many trials ran or their statuses (not covered)."""
    store.write_trials([
        trial_row("psy", f"f{i}", None, status=status, search_mode="random_count", budget_scope="search")
        for i, status in enumerate(["failed", "failed", "running"])
    ])  # fmt: skip
    code, out, err = cli(capsys, "best", "--store", store.uri, "--study", "psy")
    assert code == 1 and out == ""
    assert "no completed or stopped_early trial" in err and "psy: Papernot-Steinke" in err
    assert "failed" not in err and "running" not in err and "trials there" not in err
    # an ordinary study still gets its counts
    store.write_trial(trial_row("plain", "x0", None, status="failed"))
    code, out, err = cli(capsys, "best", "--store", store.uri, "--study", "plain")
    assert code == 1 and "(trials there: 1 failed)" in err
