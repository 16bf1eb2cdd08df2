"""Ray Train runs on a real local Ray: equivalence with one process, synchronized noise, fault tolerance."""

import os
import signal
from pathlib import Path

import pytest
import torch

from eqdp_ray.config import parse_config
from eqdp_ray.privacy import epsilon_spent
from eqdp_ray.train import train

pytestmark = pytest.mark.ray

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=3, include_dashboard=True, log_to_driver=False)
    yield
    ray.shutdown()


def config(steps=4, secret_seed=77, **training):
    base = {
        "batch_size": 128,
        "steps": steps,
        "augmult": 2,
        "crop_padding": 1,
        "lr": 0.5,
        "ema_decay": 0.9,
        "physical_batch_size": 64,
        "eval_every": 2,
    }
    base.update(training)
    return parse_config(
        {
            "name": "dist",
            "seed": 0,
            "data": {"name": "digits"},
            "model": {
                "name": "eq_resnet9",
                "options": {"group": "dihedral", "order": 4, "layout": [2, 4, 4], "num_groups": 2},
            },
            "privacy": {"target_epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0, "secret_seed": secret_seed},
            "training": base,
        }
    )


def checkpoint_parameters(result):
    state = torch.load(Path(result["checkpoint_path"]) / "state.pt", map_location="cpu", weights_only=False)
    return list(state["model"].values())


def test_two_workers_equal_one_process(local_ray, tmp_path):
    from eqdp_ray.train.distributed import train_distributed

    captured = {}

    def capture(record, state):
        captured["p"] = [v.clone() for v in state.model.state_dict().values()]
        captured["checksum"] = float(sum(q.detach().double().sum() for q in state.model.parameters()))

    single = train(config(), on_evaluation=capture, log=None)
    double = train_distributed(config(), workers=2, output_dir=tmp_path, log=None)
    assert double["steps"] == single["steps"] == 4
    assert double["epsilon"] == pytest.approx(single["epsilon"]) and double["epsilon"] <= 4.0
    assert double["noise_multiplier"] == single["noise_multiplier"]
    assert double["history"][-1]["parameter_checksum"] == pytest.approx(captured["checksum"], rel=1e-4)
    for a, b in zip(checkpoint_parameters(double), captured["p"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert double["workers"] == 2 and "storage_path" in double


def test_worker_killed_mid_run_resumes_without_double_counting(local_ray, tmp_path):
    from ray.train import UserCallback

    from eqdp_ray.train.distributed import train_distributed

    class KillOnce(UserCallback):
        def __init__(self):
            self.killed = False

        def after_report(self, run_context, metrics, checkpoint):
            if not self.killed and metrics[0].get("step") == 4 and "pid" in metrics[-1]:
                self.killed = True
                os.kill(metrics[-1]["pid"], signal.SIGKILL)  # a real worker process dies

    result = train_distributed(
        config(steps=8, secret_seed=None), workers=2, output_dir=tmp_path, callbacks=[KillOnce()], log=None
    )
    assert result["steps"] == 8
    assert result["epsilon"] == pytest.approx(epsilon_spent(result["noise_multiplier"], result["sample_rate"], 8, 1e-5))
    steps = [h["step"] for h in result["history"]]
    assert steps == sorted(set(steps)) and steps[-1] == 8  # no step counted twice or lost
    assert result["restarts"] >= 1


def test_failed_run_continues_under_the_same_name(local_ray, tmp_path):
    """What `eqdp-ray tune --resume` relies on for multi-worker trials: a new call with the run's
    name picks up its latest checkpoint instead of training from step 0."""
    from ray.train import UserCallback

    from eqdp_ray.train.distributed import train_distributed

    class KillAtStep4(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics[0].get("step") == 4 and "pid" in metrics[-1]:
                os.kill(metrics[-1]["pid"], signal.SIGKILL)

    storage = str(tmp_path / "ray")
    with pytest.raises(RuntimeError, match="failed") as failure:  # no retries: the run stops at step 4
        train_distributed(
            config(steps=8, secret_seed=None),
            workers=2,
            output_dir=tmp_path,
            storage=storage,
            max_failures=0,
            callbacks=[KillAtStep4()],
            run_name="trial-x",
            log=None,
        )
    message = str(failure.value)
    assert "\n" not in message and storage in message  # one line, pointing at Ray's full report
    result = train_distributed(
        config(steps=8, secret_seed=None), workers=2, output_dir=tmp_path, storage=storage, run_name="trial-x", log=None
    )
    assert result["restarts"] == 1  # resumed once, from the checkpoint of step 4
    steps = [h["step"] for h in result["history"]]
    assert steps == [2, 4, 6, 8]  # the passes before the failure are kept, none is repeated
    assert result["epsilon"] == pytest.approx(epsilon_spent(result["noise_multiplier"], result["sample_rate"], 8, 1e-5))


def test_restart_from_the_final_checkpoint_returns_the_result(local_ray, tmp_path):
    """A worker group restarted from the checkpoint of the final step (e.g. after a crash in the final
    evaluation) runs no step and no validation pass; it used to fail with KeyError on every retry."""
    from eqdp_ray.train.distributed import train_distributed

    storage = str(tmp_path / "ray")
    kwargs = {"workers": 2, "output_dir": tmp_path, "storage": storage, "run_name": "finished", "log": None}
    first = train_distributed(config(steps=2), **kwargs)
    again = train_distributed(config(steps=2), max_failures=0, **kwargs)  # restores the finished run by name
    assert again["steps"] == first["steps"] == 2 and again["restarts"] == first["restarts"] + 1
    assert [h["step"] for h in again["history"]] == [h["step"] for h in first["history"]]
    assert again["epsilon"] == pytest.approx(first["epsilon"])


def test_impossible_resources_fail_fast(local_ray, tmp_path):
    from eqdp_ray.train.distributed import ClusterError, train_distributed

    with pytest.raises(ClusterError, match="cluster has"):
        train_distributed(config(), workers=64, output_dir=tmp_path, log=None)
    with pytest.raises(ClusterError, match="not writable"):
        train_distributed(config(), workers=2, storage="/proc/eqdp-cannot-write", output_dir=tmp_path, log=None)


def test_training_failures_are_summed_up_in_one_line():
    """Ray's report of a failed run is remote tracebacks, one per rank; users get each distinct
    error once, with the ranks that hit it."""
    from ray.train import ControllerError, WorkerGroupError

    from eqdp_ray.train.distributed import describe_training_failure

    def raised(error):
        try:
            raise error
        except Exception as exc:
            return exc

    remote = RuntimeError('Traceback (most recent call last):\n  File "loop.py", line 3\nValueError: data dir missing')
    error = WorkerGroupError("3 workers failed", {2: remote, 0: remote, 1: raised(MemoryError("out of memory"))})
    assert describe_training_failure(error) == (
        "ranks 0, 2: ValueError: data dir missing; rank 1: MemoryError: out of memory"
    )
    assert describe_training_failure(ControllerError(KeyError("x"))) == "KeyError: 'x'"
