"""Benchmark: how long ``ResultsStore.best`` takes over a large results store.

Writes ``--rows`` synthetic trial rows (default 100,000) with ``write_trials`` in batches
of ``--batch`` rows (one Parquet file per batch and study), then times ``best`` (median of
``--repeats`` runs, each on a fresh ``ResultsStore`` so no per-object state is reused) and
prints whether it meets the 1 s target. With ``--compact`` it also compacts and re-times.

    python benchmarks/store.py --rows 100000 --store /tmp/eqdp-bench
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from eqdp_ray.results import ResultsStore  # noqa: E402

TARGET_S = 1.0
EPSILONS = (1.0, 2.0, 4.0, 8.0)


def make_row(i: int, study: str, rng: random.Random) -> dict[str, Any]:
    """A plausible trial row: nested config with int/float/str/bool leaves, metrics, times."""
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=37 * i)
    target = EPSILONS[i % len(EPSILONS)]
    acc = rng.random()
    return {
        "study": study,
        "trial_id": f"trial_{i:07d}",
        "status": rng.choice(["completed", "completed", "completed", "stopped_early", "failed"]),
        "config": {
            "lr": 10 ** rng.uniform(-4, -1),
            "batch_size": rng.choice([64, 128, 256, 512]),
            "optimizer": {"name": rng.choice(["sgd", "adam"]), "momentum": rng.choice([0.0, 0.9])},
            "model": {
                "group": rng.choice(["C4", "D4", "C8"]),
                "width": rng.choice([8, 16, 32]),
                "equivariant": rng.random() < 0.5,
            },
            "privacy": {"max_grad_norm": rng.choice([0.1, 1.0, 10.0]), "target_epsilon": target},
            "epochs": rng.choice([10, 20, 30]),
        },
        "sigma": rng.uniform(0.5, 3.0),
        "sample_rate": 0.004,
        "steps": rng.randint(1000, 20000),
        "epsilon": target * rng.uniform(0.8, 1.0),
        "target_epsilon": target,
        "delta": 1e-5,
        "accountant": "prv",
        "best_val_accuracy": acc,
        "final_val_accuracy": acc * rng.uniform(0.95, 1.0),
        "test_accuracy": acc * rng.uniform(0.9, 1.0),
        "num_params": rng.randint(10_000, 2_000_000),
        "wall_time_s": rng.uniform(60, 3600),
        "device_seconds": rng.uniform(60, 3600),
        "started_at": start,
        "finished_at": start + dt.timedelta(minutes=30),
    }


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``fn`` over ``repeats`` runs, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def report(label: str, store_uri: str, repeats: int, epsilon: float | None) -> float:
    """Time ``best`` on fresh store objects and print the figures; returns the median."""
    med, top = timed(lambda: ResultsStore(store_uri).best(epsilon=None, top=5), repeats)
    med_eps, _ = timed(lambda: ResultsStore(store_uri).best(epsilon=epsilon, top=5), repeats)
    med_ls, _ = timed(lambda: ResultsStore(store_uri).list_studies(), repeats)
    ok = "yes" if med < TARGET_S else "NO"
    print(f"[{label}] best(top=5): median {med:.3f} s over {repeats} runs -> under {TARGET_S:.0f} s target: {ok}")
    print(f"[{label}] best(epsilon={epsilon}, top=5): median {med_eps:.3f} s; list_studies: median {med_ls:.3f} s")
    print(top[["rank", "study", "trial_id", "status", "target_epsilon", "best_val_accuracy"]].to_string(index=False))
    return med


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="trial rows to write")
    parser.add_argument("--store", default=None, help="store directory/URI (default: a temp dir, deleted after)")
    parser.add_argument("--studies", type=int, default=1, help="studies to spread the rows over")
    parser.add_argument("--batch", type=int, default=1000, help="rows per write_trials call (= per file)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--compact", action="store_true", help="also compact the store and time again")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tmp = None
    uri = args.store
    if uri is None:
        tmp = tempfile.mkdtemp(prefix="eqdp-bench-")
        uri = tmp
    store = ResultsStore(uri)
    if store.studies():
        print(f"refusing to write into non-empty store {uri}", file=sys.stderr)
        return 2
    try:
        rng = random.Random(args.seed)
        t0 = time.perf_counter()
        rows = [make_row(i, f"bench-{i % args.studies}", rng) for i in range(args.rows)]
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        for start in range(0, len(rows), args.batch):
            store.write_trials(rows[start : start + args.batch])
        t_write = time.perf_counter() - t0
        n_files = len(store.list_files())
        print(
            f"generated {args.rows} rows in {t_gen:.1f} s; wrote {n_files} files in {t_write:.1f} s ({args.rows / t_write:,.0f} rows/s)"
        )
        check = ResultsStore(uri).read_trials(columns=["trial_id"])
        assert len(check) == args.rows, f"expected {args.rows} rows, read {len(check)}"
        med = report(f"{n_files} files", uri, args.repeats, EPSILONS[-1])
        if args.compact:
            t0 = time.perf_counter()
            store.compact()
            print(f"compacted in {time.perf_counter() - t0:.1f} s")
            med = report("compacted", uri, args.repeats, EPSILONS[-1])
        return 0 if med < TARGET_S else 1
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
