"""The same DP-SGD loop spread over N Ray Train workers (TorchTrainer; gloo on CPUs, NCCL on GPUs).

What makes the distributed run the *same* mechanism as one process: every rank starts from rank
0's model (weights and sampled steerable bases), draws the same global Poisson mask and keeps its
own shard (so the union is Poisson sampling of the whole set at rate q), the clipped sums are all-reduced, and every rank adds the *same* single noise draw
from a generator seeded with a secret broadcast over the process group. Checkpoints carry the
model, optimiser, EMA, step and history (the accountant's state is (sigma, q, step)), never the
secret: a restart draws a fresh one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from eqdp_ray.config import RunConfig, config_to_dict, parse_config
from eqdp_ray.train.cluster import (
    ClusterError,
    check_local_cpus,
    check_resources,
    check_writable,
    connect_ray,
    local_cpus,
    show_progress_in_worker_log,
    will_start_local_ray,
)

logger = logging.getLogger(__name__)


def _last_line(error: BaseException) -> str:
    """The line of an error that names it: remote tracebacks end with `Type: message`."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if ":" in lines[-1] else f"{type(error).__name__}: {lines[-1]}"


def describe_training_failure(error: BaseException) -> str:
    """One line for a failed Ray Train run: each distinct worker error with its ranks, or the
    controller's error. Ray's own report (multi-line remote tracebacks) stays in the run's logs."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        by_message: dict[str, list[int]] = {}
        for rank, failure in sorted(failures.items()):
            by_message.setdefault(_last_line(failure), []).append(rank)
        return "; ".join(
            f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: {message}"
            for message, ranks in by_message.items()
        )
    controller = getattr(error, "controller_failure", None)
    return _last_line(controller if controller is not None else error)


def _worker_loop(payload: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    from ray.train import Checkpoint

    from eqdp_ray.train.comm import TorchDistributedComm
    from eqdp_ray.train.loop import train

    show_progress_in_worker_log()
    config = parse_config(payload["config"])
    cpus = payload.get("cpus_per_worker") or 1
    torch.set_num_threads(max(1, int(cpus)))
    comm = TorchDistributedComm()
    if torch.cuda.is_available() and payload.get("gpus_per_worker"):
        config.device = f"cuda:{torch.cuda.current_device()}"
    else:
        config.device = "cpu"

    resume_state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume_state = torch.load(Path(directory) / "state.pt", map_location="cpu", weights_only=False)

    # What the final checkpoint holds. A restart from the checkpoint of the final step runs no
    # step and no validation pass, so it starts as the state it resumed from.
    latest: dict[str, Any] = {"state": resume_state}

    def report(metrics: dict[str, Any], state: dict[str, Any], result: dict[str, Any] | None = None) -> None:
        # Ray keeps the metrics of rank 0's checkpointed reports; every rank must call report.
        if comm.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            torch.save(state, Path(directory) / "state.pt")
            if result is not None:
                (Path(directory) / "result.json").write_text(json.dumps(result))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))

    def on_evaluation(record: dict[str, Any], state: Any) -> None:
        latest["state"] = state.state_dict()
        report(dict(record, pid=os.getpid(), rank=comm.rank, workers=comm.world_size), latest["state"])

    result = train(config, comm=comm, on_evaluation=on_evaluation, resume_state=resume_state)
    result["comm_backend"] = comm.dist.get_backend()  # gloo on CPUs, nccl on GPUs: which one ran
    if latest["state"] is resume_state and resume_state is not None:
        latest["state"] = {**resume_state, "restarts": result["restarts"]}  # this restart counts too
    # The full record travels as result.json inside rank 0's final checkpoint, not as metrics.
    report(
        {"final": True, "step": result["steps"], "epsilon": result["epsilon"]},
        latest["state"],
        result if comm.rank == 0 else None,
    )


def train_distributed(
    config: RunConfig,
    *,
    workers: int,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    address: str | None = None,
    storage: str | None = None,
    output_dir: str | Path | None = None,
    max_failures: int = 3,
    callbacks: list[Any] | None = None,
    run_name: str | None = None,
    log: Callable[[str], None] | None = logger.info,
    oversubscribe: bool = False,
    worker_loop: Callable[[dict[str, Any]], None] | None = None,
    extra_payload: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `config` on `workers` Ray Train workers and return the same result record as `train`.

    `run_name`: by default every call is a new run. With a fixed name, a call whose `storage`
    already holds a run of that name continues from its latest checkpoint (Ray Train restores a
    run by name): this is how an interrupted multi-worker tune trial resumes instead of restarting.
    `oversubscribe`: let a local Ray run more worker CPUs than this machine has (else an error).

    `worker_loop` replaces the function every worker runs (the audit's runs `train` with
    canaries); it gets the payload plus `extra_payload` and must end like `_worker_loop`: a final
    report whose rank-0 checkpoint holds `result.json`.
    """
    import ray
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        ScalingConfig,
        TrainingFailedError,
    )
    from ray.train import (
        RunConfig as TrainRunConfig,
    )
    from ray.train.torch import TorchTrainer

    if workers < 1:
        raise ClusterError(f"--workers must be >= 1, got {workers}")
    if gpus_per_worker and not torch.cuda.is_available() and not address and not os.environ.get("RAY_ADDRESS"):
        raise ClusterError(
            "--gpus-per-worker was given but this machine has no CUDA GPU; omit it to train on CPUs "
            "or pass --address of a cluster with GPU nodes"
        )
    output_dir = Path(output_dir or Path("runs") / config.name)
    storage = storage or str((output_dir / "ray").resolve())
    fix = "lower --workers, or pass --address of a cluster with more nodes"
    if will_start_local_ray(address) and not oversubscribe:
        check_local_cpus(workers, cpus_per_worker, fix=fix)
    check_writable(storage, what="checkpoint storage", flag="--storage")
    connect_ray(address, num_cpus=local_cpus(workers, cpus_per_worker, oversubscribe=oversubscribe))
    check_resources(workers, cpus_per_worker, gpus_per_worker, fix=fix)

    use_gpu = bool(gpus_per_worker)
    resources = {"CPU": cpus_per_worker} | ({"GPU": gpus_per_worker} if use_gpu else {})
    trainer = TorchTrainer(
        worker_loop or _worker_loop,
        train_loop_config={
            "config": config_to_dict(config),
            "cpus_per_worker": cpus_per_worker,
            "gpus_per_worker": gpus_per_worker,
        }
        | (extra_payload or {}),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=TrainRunConfig(
            name=run_name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
            storage_path=storage,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or [],
        ),
    )
    started = time.time()
    try:
        outcome = trainer.fit()
    except TrainingFailedError as exc:  # Train V2 raises instead of returning the error
        raise RuntimeError(
            f"distributed training failed after {max_failures} retries: "
            f"{describe_training_failure(exc)} (full report: {storage})"
        ) from exc
    if outcome.error is not None:
        raise RuntimeError(
            f"distributed training failed after {max_failures} retries: "
            f"{describe_training_failure(outcome.error)} (full report: {storage})"
        )
    if outcome.checkpoint is None or not (outcome.metrics or {}).get("final"):
        raise RuntimeError(f"distributed training ended without a final result (metrics: {outcome.metrics})")
    with outcome.checkpoint.as_directory() as directory:
        result = json.loads((Path(directory) / "result.json").read_text())
    result["workers"] = workers
    result["gpus_per_worker"] = gpus_per_worker
    result["storage_path"] = outcome.path if hasattr(outcome, "path") else storage
    result["checkpoint_path"] = outcome.checkpoint.path if outcome.checkpoint is not None else None
    result["wall_time_s"] = time.time() - started
    result["ray_version"] = ray.__version__
    if log:
        log(f"[eqdp-ray] distributed run finished: {workers} workers, checkpoints in {result['storage_path']}")
    return result
