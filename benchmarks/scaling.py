"""Throughput of the same short DP-SGD run on 1 and N Ray Train workers, side by side.

    python benchmarks/scaling.py [--workers 2] [--gpus-per-worker 0] [--steps 20] [--config configs/quickstart.yaml]
                                 [--oversubscribe]

Prints samples/s of one process without Ray, of 1 Ray worker and of N Ray workers, the N/1
ratio, and Ray's start-up overhead (wall time minus time inside training steps). On a 2-core
CPU machine the figure is about overhead, not speed-up; on a multi-GPU machine pass
--gpus-per-worker 1 (and a GPU-sized config), where the target is >= 0.9 x N. More worker CPUs
than this machine has need --oversubscribe, as for `eqdp-ray train` and `tune` (the figure then
measures contention).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")

from eqdp_ray.config import ConfigError, load_config  # noqa: E402
from eqdp_ray.train import train  # noqa: E402
from eqdp_ray.train.cluster import check_local_cpus, connect_ray, local_cpus, will_start_local_ray  # noqa: E402
from eqdp_ray.train.distributed import train_distributed  # noqa: E402


def start_local_ray(workers: int, cpus_per_worker: float, *, oversubscribe: bool) -> None:
    """Start the local Ray that both distributed runs share, sized for the N-worker one.

    Left to `train_distributed`, the 1-worker run that comes first would size it, too small for N
    workers beyond this machine's cores even when oversubscribing. Does nothing once Ray runs or
    when RAY_ADDRESS names a cluster.
    """
    if will_start_local_ray(None):
        connect_ray(None, num_cpus=local_cpus(workers, cpus_per_worker, oversubscribe=oversubscribe))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument(
        "--oversubscribe",
        action="store_true",
        help="let the local Ray run more worker CPUs than this machine has (default: refuse)",
    )
    args = parser.parse_args()
    try:
        run(args)
    except ConfigError as exc:  # bad config, too few CPUs, unreachable cluster: one line, no traceback
        print(f"eqdp-ray: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace) -> None:
    overrides = [f"training.steps={args.steps}", "training.epochs=null", f"training.eval_every={args.steps}", *args.set]
    config = load_config(args.config, overrides)
    if will_start_local_ray(None) and not args.oversubscribe:  # refuse before the first run, not after it
        check_local_cpus(args.workers, args.cpus_per_worker, fix="lower --workers")

    rows = []
    start = time.time()
    local = train(config, log=None)
    rows.append(("1 process, no Ray", local, time.time() - start))
    for workers in (1, args.workers):
        with tempfile.TemporaryDirectory() as out:
            start = time.time()  # the 1-worker row includes Ray's start-up
            start_local_ray(args.workers, args.cpus_per_worker, oversubscribe=args.oversubscribe)
            result = train_distributed(
                config,
                workers=workers,
                gpus_per_worker=args.gpus_per_worker,
                cpus_per_worker=args.cpus_per_worker,
                output_dir=out,
                oversubscribe=args.oversubscribe,
                log=None,
            )
            rows.append((f"{workers} Ray worker(s)", result, time.time() - start))

    print(
        f"config {args.config}, {args.steps} steps, expected batch {config.training.batch_size}, "
        f"K={config.training.augmult}, gpus/worker {args.gpus_per_worker}"
    )
    for label, result, wall in rows:
        in_steps = args.steps * result["expected_batch_size"] / result["samples_per_s"]
        print(
            f"  {label:<22} {result['samples_per_s']:9.1f} samples/s   wall {wall:6.1f} s   "
            f"outside training steps {wall - in_steps:6.1f} s   eps {result['epsilon']:.3f}"
        )
    one, many = rows[1][1]["samples_per_s"], rows[2][1]["samples_per_s"]
    ratio = many / one
    print(
        f"  {args.workers} workers / 1 worker = {ratio:.2f} (target on {args.workers} GPUs: >= {0.9 * args.workers:.2f})"
    )
    print(f"  Ray overhead of 1 worker vs no Ray: {rows[1][2] - rows[0][2]:.1f} s wall")


if __name__ == "__main__":
    main()
