"""The audit on N Ray Train workers: the same `train` on every rank, canaries sharded like examples.

The auditor's view is every rank's noised sum at every step (gathered at the end), so a rank
that applies a different update (e.g. one that skipped the noise) is seen as such. Ranks
whose parameters diverge make `train` stop with an error; in an audit that is evidence, not a
crash: the views gathered so far are audited and the divergence is recorded.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eqdp_ray.config import RunConfig
from eqdp_ray.privacy import GradientCanaries

DIVERGED = "ranks diverged"  # how train's check of bit-identical parameters starts its error


def _audit_worker(payload: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: train with canaries, gather every rank's view on rank 0."""
    import ray.train
    from ray.train import Checkpoint

    from eqdp_ray.config import parse_config
    from eqdp_ray.privacy import epsilon_spent, plan_privacy
    from eqdp_ray.privacy.canaries import SCORES
    from eqdp_ray.train.comm import TorchDistributedComm
    from eqdp_ray.train.loop import steps_and_rate, train

    config = parse_config(payload["config"])
    torch.set_num_threads(max(1, int(payload.get("cpus_per_worker") or 1)))
    use_gpu = torch.cuda.is_available() and payload.get("gpus_per_worker")
    config.device = f"cuda:{torch.cuda.current_device()}" if use_gpu else "cpu"
    comm = TorchDistributedComm()
    canaries = GradientCanaries.from_payload(payload["canaries"])
    diverged = None
    try:
        result = train(config, comm=comm, canaries=canaries)
    except RuntimeError as exc:
        if DIVERGED not in str(exc):
            raise
        diverged = str(exc).splitlines()[0]
        p = config.privacy
        steps, rate = steps_and_rate(config, canaries.first_row)
        sigma = plan_privacy(p.target_epsilon, p.delta, rate, steps, p.accountant).noise_multiplier
        done = canaries.steps_observed
        result = {
            "epsilon": epsilon_spent(sigma, rate, done, p.delta, p.accountant),
            "noise_multiplier": sigma,
            "sample_rate": rate,
            "steps": done,
            "target_epsilon": p.target_epsilon,
        }
    views = torch.zeros(comm.world_size, len(SCORES), canaries.count, dtype=torch.float64)
    views[comm.rank] = canaries.score_matrix()
    views = comm.all_reduce_sum([views])[0]
    final = {"final": True, "step": result["steps"], "epsilon": result["epsilon"]}
    if comm.rank != 0:
        ray.train.report(final)
        return
    with tempfile.TemporaryDirectory() as directory:
        record = {"run": result, "views": views.tolist(), "diverged": diverged}
        (Path(directory) / "result.json").write_text(json.dumps(record))
        ray.train.report(final, checkpoint=Checkpoint.from_directory(directory))


def audit_distributed(
    config: RunConfig,
    canaries: GradientCanaries,
    *,
    workers: int,
    output_dir: str | Path | None = None,
    log: Callable[[str], None] | None = print,
    **options: Any,
) -> tuple[dict[str, Any], list[np.ndarray], str | None]:
    """(the run's record, each rank's (scores x canaries) view, the divergence error or None)."""
    from eqdp_ray.train.distributed import train_distributed

    record = train_distributed(
        config,
        workers=workers,
        output_dir=output_dir,
        log=log,
        max_failures=0,  # a restarted audit would lose the views of the steps before it
        worker_loop=_audit_worker,
        extra_payload={"canaries": canaries.to_payload()},
        **options,
    )
    views = [np.asarray(view, dtype=np.float64) for view in record["views"]]
    run = dict(record["run"], workers=workers, storage_path=record.get("storage_path"))
    return run, views, record["diverged"]
