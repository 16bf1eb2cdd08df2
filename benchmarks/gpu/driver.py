"""The GPU figures, step by step, each in its own process so one failure leaves the others' figures.

    python benchmarks/gpu/driver.py --device cuda --out DIR        # what benchmarks/gpu/run.sh runs
    python benchmarks/gpu/driver.py --device cpu --out DIR --tiny  # the rehearsal at a tiny size

Steps (docs/GPU.md says what each figure means):
  versions  device, driver, torch/CUDA/cuDNN and package versions, and where each package loads from
  dp_step   benchmarks/dp_step.py on the device: ratios b/a, d/a4, c/b, e/d and peak memory
  cifar     the paper's CIFAR-10 eps=8 recipe on the carried pack, for as many steps as the budget
            allows (measured first on random data): samples/s, epsilon spent, test accuracy
  ray       one Ray Train worker on the device: the backend it chose (NCCL on a GPU), the same
            parameters as one process with the same secret (the single shared noise draw), and a
            run killed after a checkpoint that resumes from it
Each step's output goes to DIR/<step>.log, and every figure to DIR/summary.json; the last lines
printed are a short table. Nothing here stores a real run's noise seed or any image.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STEPS = ("versions", "dp_step", "cifar", "ray")
# Seconds per step on the GPU: with the install they stay under the device's 10-minute command limit.
BUDGET = {"versions": 45, "dp_step": 120, "cifar": 230, "ray": 150}
TINY_BUDGET = {"versions": 300, "dp_step": 600, "cifar": 420, "ray": 600}  # a 2-core CPU shared with others
PACKAGES = (
    "torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "pyarrow",
    "pyyaml",
    "opacus",
    "ray",
    "pydantic",
    "jsonschema",
    "tensorboardX",
)
FIGURES = "FIGURES: "
PAPER_TRAIN, PAPER_VAL, PAPER_BATCH, PAPER_STEPS = 45000, 5000, 8192, 2160


def emit(figures: dict) -> None:
    """The one line the parent reads back from a step."""
    print(FIGURES + json.dumps(figures, default=str), flush=True)


# ---------------------------------------------------------------------------------------- steps


def step_versions(args: argparse.Namespace) -> dict:
    import importlib.metadata as metadata
    import platform

    figures: dict = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()}
    for name in PACKAGES:
        try:
            dist = metadata.distribution(name)
            figures[f"pkg:{name}"] = f"{dist.version} ({Path(str(dist.locate_file(''))).resolve()})"
        except metadata.PackageNotFoundError:
            figures[f"pkg:{name}"] = "not installed"
    import torch

    figures |= {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        figures |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "cudnn": torch.backends.cudnn.version(),
        }
        try:
            query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit"
            smi = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            figures["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            figures["nvidia_smi"] = f"unavailable: {exc}"
    try:  # escnn under the device's numpy: the import every model step needs
        from eqdp_ray.models import build_model

        build_model("eq_resnet9", group="dihedral", order=4, layout=(2, 4, 4), restrict=2, in_channels=3)
        figures["escnn_model_builds"] = True
    except Exception as exc:  # noqa: BLE001 - reported, the other steps still run
        figures["escnn_model_builds"] = f"{type(exc).__name__}: {exc}"
    return figures


_TIME = re.compile(r"^\s*(\w+):\s+([\d.]+) s\s+peak \+\s*([\d.]+) MiB")
_RATIO = re.compile(r"^\s*([\w/]+) =\s+([\d.]+)\s+target (\S+) ([\d.]+)\s+(met|NOT met)")


def step_dp_step(args: argparse.Namespace) -> dict:
    """The paper's model (vmap route as peer) and ResNet-9 GN (Opacus's hooks as peer), one after the other."""
    models = ("eq_resnet9",) if args.tiny else ("eq_resnet9", "resnet9")
    deadline = time.time() + args.budget - 5
    figures: dict = {}
    for i, model in enumerate(models):
        command = [sys.executable, str(REPO / "benchmarks" / "dp_step.py"), "--model", model, "--device", args.device]
        command += ["--repeats", "1" if args.tiny else "5", "--threads", str(min(os.cpu_count() or 1, 16))]
        if args.tiny:
            command.append("--skip-vmap-k4")
        print("+ " + " ".join(command), flush=True)
        share = (deadline - time.time()) * (0.6 if i == 0 and len(models) > 1 else 1.0)
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=max(1.0, share))
        except subprocess.TimeoutExpired:
            figures[f"{model} error"] = f"timed out after {share:.0f} s"
            continue
        print(run.stdout + run.stderr, flush=True)
        figures[f"{model} command"] = " ".join(command[1:])
        ratios = 0
        for line in run.stdout.splitlines():
            if m := _TIME.match(line):
                figures[f"{model} {m[1]}_s"], figures[f"{model} {m[1]}_peak_mib"] = float(m[2]), float(m[3])
            elif m := _RATIO.match(line):
                ratios += 1
                figures[f"{model} {m[1]}"] = float(m[2])
                figures[f"{model} {m[1]} target"] = f"{m[3]} {m[4]} {m[5]}"
        if run.returncode or not ratios:
            figures[f"{model} error"] = f"exit {run.returncode}, {ratios} ratios printed"
    if not any(key.endswith(" target") for key in figures):
        raise RuntimeError(f"dp_step.py gave no ratio: {figures}")
    return figures


def _cifar_overrides(header: dict, root: Path, device: str, tiny: bool) -> list[str]:
    """The paper's recipe on the pack: a tenth held out for validation, as 5,000 of its 50,000."""
    val_fraction = PAPER_VAL / (PAPER_TRAIN + PAPER_VAL)
    overrides = [f"data.root={root}", f"data.val_size={val_fraction}", f"device={device}"]
    if tiny:  # the rehearsal on a 2-core CPU: the recipe's code path on a few hundred of the pack's images
        overrides += ["model.options.layout=[4,8,8]", "training.physical_batch_size=64", "training.eval_batch_size=256"]
        if header["train"] > 1000:
            overrides += ["data.train_subset=360", "data.test_subset=100"]
    return overrides


def step_cifar(args: argparse.Namespace) -> dict:
    import dataclasses

    import torch

    sys.path.insert(0, str(HERE))
    import datapack

    from eqdp_ray.config import load_config
    from eqdp_ray.data import load_dataset
    from eqdp_ray.train import train

    started = time.time()
    deadline = started + args.budget - (20 if args.tiny else 35)  # leaves time for the final evaluation
    pack = Path(args.data)
    if not pack.is_file():
        raise FileNotFoundError(f"no data pack at {pack}: run benchmarks/gpu/build.py and carry .gpudata")
    root = Path(tempfile.mkdtemp(prefix="eqdp-cifar-"))
    header = datapack.unpack(pack, root)
    print(f"unpacked {pack.name}: {header} into {root}", flush=True)
    overrides = _cifar_overrides(header, root, args.device, args.tiny)
    config_path = REPO / "configs" / "cifar10_eps8_paper.yaml"
    base = load_config(config_path, overrides)
    data = load_dataset(
        base.data.name,
        base.data.root,
        val_size=base.data.val_size,
        seed=base.seed,
        train_subset=base.data.train_subset,
        test_subset=base.data.test_subset,
    )
    # The expected batch scaled to the pack's training part keeps the recipe's sample rate q = 8192 / 45,000.
    batch = max(1, round(PAPER_BATCH * len(data.train_y) / PAPER_TRAIN))
    overrides.append(f"training.batch_size={batch}")
    # cudnn.benchmark stays off: Poisson batches give a new micro-batch shape nearly every step.

    # Throughput first, on random images of the same shapes (no private data is touched), to choose
    # how many steps fit: sigma is calibrated for exactly the steps that then run.
    noise = torch.Generator().manual_seed(0)
    random_data = dataclasses.replace(
        data,
        train_x=torch.randint(0, 256, data.train_x.shape, dtype=torch.uint8, generator=noise),
        train_y=torch.randint(0, data.num_classes, data.train_y.shape, generator=noise),
    )
    probe_steps = 1 if args.tiny else 3
    probe_config = load_config(config_path, overrides + [f"training.steps={probe_steps}", "privacy.secret_seed=1"])
    probe_start = time.time()
    probe = train(probe_config, data=random_data, log=None)
    per_step = (time.time() - probe_start) / probe_steps  # includes the model build and evaluations: an upper bound
    steady = batch / probe["samples_per_s"]
    left = deadline - time.time()
    steps = max(1, min(PAPER_STEPS, int((left - (per_step - steady)) / steady)))
    if args.tiny:
        steps = min(steps, 2)
    print(
        f"probe on random data: {probe['samples_per_s']:.1f} samples/s at expected batch {batch} "
        f"({steady:.2f} s/step); {left:.0f} s left -> {steps} steps",
        flush=True,
    )

    config = load_config(config_path, overrides + [f"training.steps={steps}", f"training.eval_every={steps}"])
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result = train(config, data=data)
    figures = {
        "pack": f"{header['train']} train / {header['test']} test images, {header['bits']} bits per value",
        "train_size": result["train_size"],
        "val_size": result["val_size"],
        "test_size": result["test_size"],
        "expected_batch": batch,
        "sample_rate": result["sample_rate"],
        "augmult": result["augmult"],
        "steps": result["steps"],
        "noise_multiplier": result["noise_multiplier"],
        "epsilon": result["epsilon"],
        "delta": result["delta"],
        "noise_source": result["noise_source"],
        "samples_per_s": result["samples_per_s"],
        "probe_samples_per_s": probe["samples_per_s"],
        "val_accuracy": result["val_accuracy"],
        "test_accuracy": result["test_accuracy"],
        "wall_time_s": result["wall_time_s"],
        "hours_for_paper_recipe": PAPER_STEPS * PAPER_BATCH / result["samples_per_s"] / 3600,
    }
    if args.device.startswith("cuda"):
        figures["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return figures


def _ray_config(steps: int, secret_seed: int | None, device: str):
    from eqdp_ray.config import parse_config

    return parse_config(
        {
            "name": "gpu-ray-check",
            "seed": 0,
            "device": device,
            "data": {"name": "digits"},
            "model": {"name": "eq_resnet9", "options": {"group": "dihedral", "order": 4, "layout": [4, 8, 8]}},
            "privacy": {"target_epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0, "secret_seed": secret_seed},
            "training": {
                "batch_size": 128,
                "steps": steps,
                "augmult": 2,
                "crop_padding": 1,
                "lr": 0.5,
                "ema_decay": 0.9,
                "physical_batch_size": 64,
                "eval_every": 2,
            },
        }
    )


def step_ray(args: argparse.Namespace) -> dict:
    import ray
    import torch
    from ray.train import UserCallback

    from eqdp_ray.train import train
    from eqdp_ray.train.distributed import train_distributed

    gpu = args.device.startswith("cuda")
    gpus_per_worker = 1.0 if gpu else 0.0
    storage = Path(tempfile.mkdtemp(prefix="eqdp-ray-"))
    gpus = torch.cuda.device_count() if gpu else 0
    ray.init(num_cpus=min(os.cpu_count() or 1, 8), num_gpus=gpus, include_dashboard=False, log_to_driver=True)
    figures: dict = {"ray": ray.__version__, "cluster_gpus": ray.cluster_resources().get("GPU", 0.0)}

    # Reference: one process, 8 steps, secret 77; and secret 78 for the scale another noise draw makes.
    # (A fixed secret: every run in this step is a check of the mechanism, NOT a private run.)
    def final_parameters(secret: int) -> list:
        captured: dict = {}
        train(
            _ray_config(8, secret, args.device),
            on_evaluation=lambda record, state: captured.update(
                p=[v.detach().cpu() for v in state.model.state_dict().values()]
            ),
            log=None,
        )
        return captured["p"]

    single, other_noise = final_parameters(77), final_parameters(78)

    class KillAtStep4(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics[0].get("step") == 4 and "pid" in metrics[-1]:
                os.kill(metrics[-1]["pid"], signal.SIGKILL)  # the worker process dies after its step-4 checkpoint

    # The same run on one Ray Train worker, killed after its step-4 checkpoint, then called again
    # under its name: it must resume from that checkpoint and end where the one process ended.
    run = dict(workers=1, gpus_per_worker=gpus_per_worker, output_dir=storage, storage=str(storage), run_name="r")
    started = time.time()
    try:
        train_distributed(_ray_config(8, 77, args.device), **run, max_failures=0, callbacks=[KillAtStep4()], log=None)
        figures["killed"] = False
    except RuntimeError as exc:
        figures["killed"] = True
        figures["kill_message"] = str(exc)[:300]
    resumed = train_distributed(_ray_config(8, 77, args.device), **run, log=None)
    figures["ray_train_wall_s"] = time.time() - started
    state = torch.load(Path(resumed["checkpoint_path"]) / "state.pt", map_location="cpu", weights_only=False)

    def distance(a: list, b: list) -> float:
        return sum(((x.double() - y.double()) ** 2).sum().item() for x, y in zip(a, b)) ** 0.5

    # Near 0 against the scale of another draw: the worker added the very same single noise vector
    # per step as the loop, before and after the restart.
    figures |= {
        "backend": resumed.get("comm_backend"),
        "worker_device": resumed["device"],
        "noise_multiplier": resumed["noise_multiplier"],
        "resumed_restarts": resumed["restarts"],
        "resumed_history_steps": [h["step"] for h in resumed["history"]],
        "epsilon": resumed["epsilon"],
        "param_distance_vs_one_process": distance(list(state["model"].values()), single),
        "param_distance_other_noise": distance(other_noise, single),
        "checkpoint": resumed["checkpoint_path"],
    }
    figures["same_noise_ratio"] = figures["param_distance_vs_one_process"] / figures["param_distance_other_noise"]
    ray.shutdown()
    ok = (
        figures["killed"]
        and figures["same_noise_ratio"] < 0.05
        and resumed["restarts"] == 1
        and figures["resumed_history_steps"] == [2, 4, 6, 8]
    )
    if gpu:
        ok = ok and figures["backend"] == "nccl"
    figures["ok"] = bool(ok)
    return figures


STEP_FUNCTIONS = {"versions": step_versions, "dp_step": step_dp_step, "cifar": step_cifar, "ray": step_ray}


# ---------------------------------------------------------------------------------------- parent


def run_step(name: str, args: argparse.Namespace, budget: float, out: Path) -> dict:
    """Run one step in a fresh process group with a time limit; its log to out/<name>.log."""
    command = [sys.executable, str(Path(__file__).resolve()), "--run-step", name, "--device", args.device]
    command += ["--data", str(args.data), "--budget", str(budget)] + (["--tiny"] if args.tiny else [])
    started = time.time()
    figures: dict = {}
    with open(out / f"{name}.log", "w") as log:
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        timer = _Killer(child, budget)
        for line in child.stdout:
            if line.startswith(FIGURES):
                figures = json.loads(line[len(FIGURES) :])
                continue
            print(f"[{name}] {line}", end="", flush=True)
            log.write(line)
        child.wait()
        timer.cancel()
    status = "ok" if child.returncode == 0 and figures else f"failed (exit {child.returncode})"
    if timer.fired:
        status = f"timed out after {budget:.0f} s"
    return {"status": status, "seconds": round(time.time() - started, 1), "figures": figures}


class _Killer:
    """Ends a step's whole process group (Ray starts daemons) once its budget is spent."""

    def __init__(self, child: subprocess.Popen, seconds: float) -> None:
        import threading

        self.child, self.fired = child, False
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self) -> None:
        self.fired = True
        try:
            os.killpg(self.child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def cancel(self) -> None:
        self.timer.cancel()
        try:  # anything the step left behind (raylet, gcs_server) goes with it
            os.killpg(self.child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")))
    parser.add_argument("--data", type=Path, default=REPO / ".gpudata" / "cifar10-pack.npz.xz")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--tiny", action="store_true", help="the CPU rehearsal: fewest repeats and steps")
    parser.add_argument("--run-step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))

    if args.run_step:  # child: one step, its figures as the last line
        # The library reports progress through logging; a step's log must show it as `train` prints it.
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
        emit(STEP_FUNCTIONS[args.run_step](args))
        return 0

    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    budgets = TINY_BUDGET if args.tiny else BUDGET
    summary: dict = {"started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "device": args.device}
    for name in steps:
        print(f"=== {name} (budget {budgets[name]} s)", flush=True)
        summary[name] = run_step(name, args, budgets[name], args.out)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print("=== summary")
    for name in steps:
        entry = summary[name]
        print(f"{name}: {entry['status']} in {entry['seconds']} s")
        for key, value in entry["figures"].items():
            print(f"  {key}: {_short(value)}")
    return 0 if all(summary[n]["status"] == "ok" for n in steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
