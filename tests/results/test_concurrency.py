"""Many writers at once (processes and threads) must neither lose nor corrupt rows."""

from __future__ import annotations

import multiprocessing as mp
import threading
import warnings

from eqdp_ray.results import ResultsStore

from .helpers import trial

N_PROCS = 8
PER_PROC = 25


def _writer(uri: str, worker: int, start, errors) -> None:
    """Child process body: write 25 trials, each first as running then as completed."""
    try:
        store = ResultsStore(uri)
        start.wait(60)
        for i in range(PER_PROC):
            tid = f"w{worker}-{i:02d}"
            study = f"s{worker % 2}"
            store.write_trial(trial(study, tid, status="running", best_val_accuracy=None, finished_at=None))
            store.write_trial(trial(study, tid, best_val_accuracy=(worker * PER_PROC + i) / 1000))
            store.write_history([{"study": study, "trial_id": tid, "epoch": 1, "val_accuracy": 0.1}])
    except BaseException as exc:  # report to the parent instead of dying silently
        errors.put(f"worker {worker}: {exc!r}")
        raise


def test_eight_processes_writing_at_once(tmp_path):
    uri = str(tmp_path / "store")
    ctx = mp.get_context("spawn")  # no fork: the parent may hold pyarrow thread pools
    start, errors = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(uri, w, start, errors)) for w in range(N_PROCS)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == [] and [p.exitcode for p in procs] == [0] * N_PROCS

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torn/partial file may be visible
        store = ResultsStore(uri)
        df = store.read_trials()
        history = store.read_history()
    assert len(df) == N_PROCS * PER_PROC == 200
    assert df[["study", "trial_id"]].drop_duplicates().shape[0] == 200
    assert set(df["status"]) == {"completed"}
    assert sorted(df["best_val_accuracy"]) == [i / 1000 for i in range(200)]
    assert len(store.read_trials(latest_only=False)) == 400
    assert len(history) == 200
    assert store.list_studies()["n_trials"].tolist() == [100, 100]
    assert store.best(top=1)["trial_id"].tolist() == [f"w{N_PROCS - 1}-{PER_PROC - 1:02d}"]


def test_threads_writing_while_another_compacts(tmp_path):
    store = ResultsStore(str(tmp_path / "store"))
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(30):
                store.write_trial(trial("s", f"t{worker}-{i}", best_val_accuracy=i / 100))
        except BaseException as exc:
            errors.append(exc)

    def compact_and_read() -> None:
        try:
            for _ in range(5):
                store.compact("s") if store.studies() else None
                store.read_trials()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    threads.append(threading.Thread(target=compact_and_read))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(store.read_trials()) == 120
    store.compact("s")
    assert len(store.read_trials()) == 120
