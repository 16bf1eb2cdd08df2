"""The DP-SGD training loop, readable top to bottom.

Per step: Poisson-sample the batch, run it in physical micro-batches of K augmentations per
example, take per-example gradients, average them over the K augmentations, clip each example
to C, sum; all-reduce the sums over workers; add ONE Gaussian draw N(0, sigma^2 C^2); divide by
the expected batch size; SGD step; EMA of the weights for evaluation. sigma was calibrated before
the first step for exactly this sample rate and number of steps.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from eqdp_ray import __version__
from eqdp_ray.config import ConfigError, RunConfig, config_to_dict
from eqdp_ray.data import (
    ImageDataset,
    apply_crop_flip,
    batch_too_large_message,
    crop_flip_for_rows,
    load_dataset,
    normalize,
)
from eqdp_ray.models import build_model, count_parameters, describe_group
from eqdp_ray.privacy import (
    GradientCanaries,
    PerExampleGradients,
    PoissonSampler,
    PrivacyPlan,
    add_gaussian_noise,
    check_delta_for_size,
    clip_and_sum,
    epsilon_spent,
    format_epsilon,
    noise_generator,
    noisy_accuracy,
    plan_fixed_noise,
    plan_privacy,
    secure_seed,
)
from eqdp_ray.train.comm import LocalComm
from eqdp_ray.train.memory import reuse_freed_memory

logger = logging.getLogger(__name__)

EvaluationCallback = Callable[[dict[str, Any], "TrainState"], None]  # after each validation pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device '{name}' is not a device torch knows; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but no CUDA GPU is available here; use device: auto or cpu")
    return device


def derive_seed(secret: int, purpose: str, step: int) -> int:
    """A per-step seed from the run's secret: resuming at step t needs no stored RNG state."""
    digest = hashlib.sha256(f"{secret}:{purpose}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def steps_and_rate(config: RunConfig, train_size: int) -> tuple[int, float]:
    t, d = config.training, config.data
    if t.batch_size > train_size:
        raise ConfigError(
            batch_too_large_message(
                "training.batch_size", t.batch_size, train_size, train_subset=d.train_subset, val_size=d.val_size
            )
        )
    sample_rate = t.batch_size / train_size
    check_delta_for_size(config.privacy.delta, train_size)
    steps = t.steps if t.steps is not None else max(1, math.ceil(t.epochs / sample_rate))
    return steps, sample_rate


class ExponentialMovingAverage:
    """EMA of the weights with the usual warm-up, min(decay, (1+t)/(10+t)): post-processing, no privacy cost."""

    def __init__(self, model: nn.Module, decay: float | None) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = 0.0 if self.decay is None else min(self.decay, (1 + step) / (10 + step))
        for shadow, live in zip(self.shadow.parameters(), model.parameters()):
            shadow.mul_(decay).add_(live.detach(), alpha=1 - decay)


@dataclass
class TrainState:
    """Everything a checkpoint holds. Deliberately absent: the noise and sampler secrets."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: ExponentialMovingAverage
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0  # how many times this run was resumed from a checkpoint

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.shadow.state_dict(),
            "step": self.step,
            "history": self.history,
            "restarts": self.restarts,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.shadow.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.restarts = int(state.get("restarts", 0)) + 1


@torch.no_grad()
def count_correct(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, data: ImageDataset, device: torch.device, batch_size: int
) -> int:
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        inputs = normalize(x[start : start + batch_size].to(device), data.mean, data.std)
        correct += (model(inputs).argmax(1).cpu() == y[start : start + batch_size]).sum().item()
    return int(correct)


def validation_score(
    model: nn.Module,
    data: ImageDataset,
    device: torch.device,
    batch_size: int,
    score_noise: float | None,
    generator: torch.Generator,
) -> float:
    """The validation accuracy that leaves the run: exact, or with N(0, score_noise^2) on the count (privacy.noise)."""
    if score_noise is None:
        return evaluate(model, data.val_x, data.val_y, data, device, batch_size)
    correct = count_correct(model, data.val_x, data.val_y, data, device, batch_size)
    return noisy_accuracy(correct, len(data.val_y), score_noise, generator)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, data: ImageDataset, device: torch.device, batch_size: int
) -> float:
    if len(y) == 0:
        return float("nan")
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        inputs = normalize(x[start : start + batch_size].to(device), data.mean, data.std)
        correct += (model(inputs).argmax(1).cpu() == y[start : start + batch_size]).sum().item()
    return correct / len(y)


def synced_parameter_checksum(model: nn.Module, comm: Any) -> float:
    """The sum of all parameters, checked equal on every rank; raises if the ranks diverged.

    Recorded in the history, so that a distributed run can be compared with its single-process twin.
    """
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().cpu()
    values = torch.zeros(comm.world_size, dtype=torch.float64)
    values[comm.rank] = checksum
    values = comm.all_reduce_sum([values])[0]
    if not bool((values == values[0]).all()):
        raise RuntimeError(
            f"ranks diverged: parameter checksums {values.tolist()}; the noise or the reduction "
            "is not shared, which would break the privacy analysis"
        )
    return float(values[0])


def _augmented_micro_batches(rows: torch.Tensor, params: torch.Tensor, examples_per_micro: int):
    for start in range(0, len(rows), examples_per_micro):
        yield rows[start : start + examples_per_micro], params[start : start + examples_per_micro]


@dataclass
class Run:
    """One training run as `setup_run` builds it: the data, the calibrated privacy plan, the model and
    its state, and the generators whose per-step seeds come from the run's secret."""

    config: RunConfig
    comm: Any
    device: torch.device
    data: ImageDataset
    steps: int
    sample_rate: float
    plan: PrivacyPlan
    hflip: bool
    options: dict[str, Any]
    num_params: int
    state: TrainState
    gradients: PerExampleGradients
    sampler: PoissonSampler
    secret: int = field(repr=False)
    noise_rng: torch.Generator = field(repr=False)
    sample_rng: torch.Generator = field(repr=False)
    canaries: GradientCanaries | None = None
    score_rng: torch.Generator = field(default_factory=lambda: noise_generator(0), repr=False)  # validation noise

    @property
    def train_size(self) -> int:
        return len(self.data.train_y)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, round(1 / self.sample_rate))

    @property
    def eval_every(self) -> int:
        return self.config.training.eval_every or self.steps_per_epoch


def setup_run(
    config: RunConfig,
    comm: Any,
    resume_state: dict[str, Any] | None,
    data: ImageDataset | None,
    canaries: GradientCanaries | None = None,
) -> Run:
    """Load the data, calibrate sigma for exactly this sample rate and number of steps, build the model."""
    t, p = config.training, config.privacy
    device = resolve_device(config.device)
    data = data or load_dataset(
        config.data.name,
        config.data.root,
        download=config.data.download,
        val_size=config.data.val_size,
        seed=config.seed,
        train_subset=config.data.train_subset,
        test_subset=config.data.test_subset,
    )
    train_size = len(data.train_y)
    steps, sample_rate = steps_and_rate(config, train_size)
    if p.noise_multiplier is not None:  # chosen by a search's calibration (budget scope `search`)
        plan: PrivacyPlan = plan_fixed_noise(
            p.target_epsilon, p.delta, sample_rate, steps, p.noise_multiplier, p.accountant
        )
    else:
        plan = plan_privacy(p.target_epsilon, p.delta, sample_rate, steps, p.accountant)

    torch.manual_seed(config.seed)  # public randomness: initialisation only
    options = dict(config.model.options)
    options.setdefault("in_channels", data.in_channels)
    options.setdefault("num_classes", data.num_classes)
    model = build_model(config.model.name, **options).to(device)
    # Every rank starts from rank 0's model: the same initial weights and the same sampled
    # steerable bases, even where the ranks' escnn caches (one per node) were filled apart.
    comm.broadcast_from_rank0(list(model.state_dict().values()))
    ema = ExponentialMovingAverage(model, t.ema_decay)  # copied before the hooks are attached
    # A fixed secret seed promises a run that repeats bit for bit: routes by shape, not by timing.
    gradients = PerExampleGradients(model, reproducible=p.secret_seed is not None)
    if device.type == "cpu":
        reuse_freed_memory()  # a DP step's per-example gradients are large blocks, freed every step
    optimizer = torch.optim.SGD(
        model.parameters(), lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay
    )
    state = TrainState(model, optimizer, ema)
    if resume_state is not None:
        state.load_state_dict(resume_state)
        state.ema.shadow.to(device)

    # The secret behind noise and sampling: fresh from the OS for every (re)start, shared over
    # the process group, never logged or checkpointed. A fixed value is for tests only.
    secret = p.secret_seed if p.secret_seed is not None else comm.broadcast_int(secure_seed())
    noise_rng, sample_rng = noise_generator(0), noise_generator(0)
    # Canaries are rows after the real examples: the same sampler gives each the same rate q.
    rows_total = train_size + (canaries.count if canaries is not None else 0)
    if canaries is not None:
        canaries.bind(sum(q.numel() for q in model.parameters() if q.requires_grad), train_size, p.max_grad_norm)
    return Run(
        config=config,
        comm=comm,
        device=device,
        data=data,
        steps=steps,
        sample_rate=sample_rate,
        plan=plan,
        hflip=data.hflip if t.hflip is None else t.hflip,
        options=options,
        num_params=count_parameters(model),
        state=state,
        gradients=gradients,
        sampler=PoissonSampler(rows_total, sample_rate, sample_rng, comm.rank, comm.world_size),
        secret=secret,
        noise_rng=noise_rng,
        sample_rng=sample_rng,
        canaries=canaries,
    )


def augmentations_of(rows: torch.Tensor, run: Run, multiplicity: int, crop_padding: int) -> torch.Tensor:
    """This step's crop and flip parameters of the sampled rows, drawn from the run's secret.

    Each row's are a function of (this step's key, the row) alone, so an example's augmentation does
    not depend on which others were sampled, and the key comes from the secret, like the noise and
    the sample: with a public seed, adding one example would redraw (a known function of) the
    others' augmentations, and the step's sensitivity would exceed C (docs/PRIVACY.md).
    """
    key = derive_seed(run.secret, "augment", run.state.step)
    return crop_flip_for_rows(rows, key, multiplicity, crop_padding, run.hflip)


def dp_sgd_step(run: Run) -> torch.Tensor:
    """One DP-SGD step (see the module docstring); returns (loss sum, correct, augmented count) over
    all ranks. The realised batch size stays inside: only the noisy sum it went into leaves."""
    t, p, state, model = run.config.training, run.config.privacy, run.state, run.state.model
    data, device = run.data, run.device
    model.train()
    run.noise_rng.manual_seed(derive_seed(run.secret, "noise", state.step))
    run.sample_rng.manual_seed(derive_seed(run.secret, "sample", state.step))
    global_rows = run.sampler.sample_global()
    aug_params = augmentations_of(global_rows, run, t.augmult, t.crop_padding)
    mine = run.sampler.shard_mask(global_rows)
    rows, params_mine = global_rows[mine], aug_params[mine]
    canaries = run.canaries
    if canaries is not None:
        real, canary_ids = canaries.split_rows(rows)
        rows, params_mine = rows[real], params_mine[real]

    params = [q for q in model.parameters() if q.requires_grad]
    summed = [torch.zeros_like(q) for q in params]
    stats = torch.zeros(3, dtype=torch.float64)  # loss, correct, augmented count
    examples_per_micro = max(1, t.physical_batch_size // t.augmult)
    for micro_rows, micro_params in _augmented_micro_batches(rows, params_mine, examples_per_micro):
        images = normalize(data.train_x[micro_rows].to(device), data.mean, data.std)
        images = images.repeat_interleave(t.augmult, dim=0)
        inputs = apply_crop_flip(images, micro_params.reshape(-1, 3), t.crop_padding)
        targets = data.train_y[micro_rows].to(device).repeat_interleave(t.augmult)
        # Averaged over K; where cheaper, kept as ghost norms and a deferred clipped sum (privacy/ghost_norms.py).
        per_example, logits = run.gradients(inputs, targets, t.augmult, defer=True)
        clipped_sum, _ = clip_and_sum(per_example, p.max_grad_norm)
        summed = [a + b for a, b in zip(summed, clipped_sum)]
        with torch.no_grad():
            stats[0] += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            stats[1] += (logits.argmax(1) == targets).sum().item()
            stats[2] += len(targets)
    if canaries is not None:
        for chunk in canaries.batches(canary_ids):
            canary_sum, _ = clip_and_sum(canaries.gradients(chunk, params), p.max_grad_norm)
            summed = [a + b for a, b in zip(summed, canary_sum)]
    reduced = run.comm.all_reduce_sum(summed + [stats.to(summed[0].device)])
    summed, stats = reduced[:-1], reduced[-1].cpu()
    noisy = add_gaussian_noise(summed, run.plan.noise_multiplier, p.max_grad_norm, run.noise_rng)
    if canaries is not None:
        canaries.observe(noisy)
    for q, g in zip(params, noisy):
        q.grad = g / run.sampler.expected_batch_size
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.ema.update(model, state.step)
    state.step += 1
    return stats


@dataclass
class _Tally:
    """Training loss/accuracy and throughput since the last reset.

    Throughput counts the expected batch size of each step, not the realised Poisson sample: the
    sample sizes are not covered by epsilon, so the samples/s that leaves the run (logs, store)
    must not be a function of them (docs/PRIVACY.md, section 6)."""

    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    examples: float = 0.0
    seconds: float = 0.0

    def add(self, examples: float, stats: torch.Tensor, seconds: float) -> None:
        self.loss += stats[0].item()
        self.correct += stats[1].item()
        self.count += stats[2].item()
        self.examples += examples
        self.seconds += seconds

    @property
    def samples_per_s(self) -> float:
        return self.examples / max(self.seconds, 1e-9)


def released_validation(run: Run) -> float:
    """The validation score of the EMA weights that leaves the run (noised when privacy.score_noise is set)."""
    t, p, state = run.config.training, run.config.privacy, run.state
    run.score_rng.manual_seed(derive_seed(run.secret, "score", state.step))
    return validation_score(state.ema.shadow, run.data, run.device, t.eval_batch_size, p.score_noise, run.score_rng)


def evaluation_record(run: Run, window: _Tally) -> dict[str, Any]:
    """Validate the EMA weights: one history entry (what `on_evaluation` receives)."""
    p, state = run.config.privacy, run.state
    record = {
        "epoch": state.step / run.steps_per_epoch,
        "step": state.step,
        "val_accuracy": released_validation(run),
        "score_releases": len(state.history) + 1,  # validation scores released so far, restarts included
        "epsilon": epsilon_spent(run.plan.noise_multiplier, run.sample_rate, state.step, p.delta, p.accountant),
        "samples_per_s": window.samples_per_s,
        "samples_per_s_per_worker": window.samples_per_s / run.comm.world_size,
    }
    if p.release_train_metrics:  # computed on private batches without noise: not covered by epsilon
        record["train_loss"] = window.loss / max(window.count, 1)
        record["train_accuracy"] = window.correct / max(window.count, 1)
    if run.comm.world_size > 1:
        record["parameter_checksum"] = synced_parameter_checksum(state.model, run.comm)
    return record


def _log_start(run: Run, log: Callable[[str], None]) -> None:
    t, p, plan, data = run.config.training, run.config.privacy, run.plan, run.data
    log(
        f"[eqdp-ray] {run.config.model.name} ({run.num_params:,} params) on {data.name}: {run.train_size} train / "
        f"{len(data.val_y)} val / {len(data.test_y)} test, device {run.device}, workers {run.comm.world_size}"
    )
    log(
        f"[eqdp-ray] privacy: target eps={format_epsilon(plan.target_epsilon)} delta={plan.delta} ({plan.accountant}); "
        f"q={run.sample_rate:.5f} (expected batch {t.batch_size}), {run.steps} steps, "
        f"sigma={plan.noise_multiplier:.4f}, C={p.max_grad_norm}, K={t.augmult}"
        + (f"; validation scores noised (std {p.score_noise:.3g} on the count)" if p.score_noise is not None else "")
        + ("" if p.release_train_metrics else "; training loss/accuracy are not released")
    )
    uncovered = not_covered_by_epsilon(run)
    if uncovered:
        log(f"[eqdp-ray] NOT covered by this epsilon (computed on private data, unaccounted): {', '.join(uncovered)}")


def not_covered_by_epsilon(run: Run) -> list[str]:
    """What this run releases that its epsilon (the training steps') does not cover.

    In a search of scope `search` the study's ledger accounts the noised validation scores
    (privacy.noise_multiplier is set); in a plain run it does not, and the validation split is
    held-out private data.
    """
    p, uncovered = run.config.privacy, []
    if len(run.data.val_y) and p.noise_multiplier is None:
        uncovered.append(
            "validation scores" + (" (noised, not accounted)" if p.score_noise is not None else " (exact)")
        )
    if p.release_train_metrics:
        uncovered.append("training loss/accuracy (exact)")
    return uncovered


def train(
    config: RunConfig,
    *,
    comm: Any = None,
    on_evaluation: EvaluationCallback | None = None,
    resume_state: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = logger.info,
    data: ImageDataset | None = None,
    canaries: GradientCanaries | None = None,
) -> dict[str, Any]:
    """Train one model with DP-SGD and return the result record (what result.json holds).

    `on_evaluation(record, state)` runs after every validation pass (each `eval_every` steps and
    after the last step), e.g. to report and checkpoint.

    `canaries` makes the run an audit (eqdp_ray.audit): extra examples with chosen gradients,
    sampled, clipped and noised like the others, and observed after the noise at every step.
    """
    comm = comm or LocalComm()
    log = log if (log is not None and comm.rank == 0) else (lambda _msg: None)
    started = time.time()
    run = setup_run(config, comm, resume_state, data, canaries)
    _log_start(run, log)

    state, window, totals = run.state, _Tally(), _Tally()  # totals: expected examples and seconds in steps
    best_val = max((h["val_accuracy"] for h in state.history), default=-1.0)  # a resumed run keeps its best
    while state.step < run.steps:
        step_start = time.time()
        stats = dp_sgd_step(run)
        seconds = time.time() - step_start
        for tally in (window, totals):
            tally.add(run.sampler.expected_batch_size, stats, seconds)
        if state.step % run.eval_every == 0 or state.step == run.steps:
            record = evaluation_record(run, window)
            best_val = max(best_val, record["val_accuracy"])
            state.history.append(record)
            train_part = (
                f"loss {record['train_loss']:.4f} train acc {record['train_accuracy']:.4f} "
                if "train_loss" in record
                else ""
            )
            log(
                f"[eqdp-ray] epoch {record['epoch']:.2f} step {state.step}/{run.steps}: {train_part}"
                f"val acc {record['val_accuracy']:.4f} eps {format_epsilon(record['epsilon'])} "
                f"{record['samples_per_s']:.1f} samples/s"
            )
            window = _Tally()
            if on_evaluation is not None:
                on_evaluation(record, state)
    return result_record(run, best_val, totals, started, log)


def result_record(
    run: Run, best_val: float, totals: _Tally, started: float, log: Callable[[str], None]
) -> dict[str, Any]:
    """Final validation and test accuracy of the EMA weights, and everything result.json records."""
    config, t, p, data, state = run.config, run.config.training, run.config.privacy, run.data, run.state
    releases = len(state.history)
    if state.history and state.history[-1]["step"] == state.step:
        val_acc = float(state.history[-1]["val_accuracy"])  # the last pass's score: no second release
    else:
        releases += 1
        val_acc = released_validation(run)
    test_acc = evaluate(state.ema.shadow, data.test_x, data.test_y, data, run.device, t.eval_batch_size)  # public
    wall = time.time() - started
    spent = epsilon_spent(run.plan.noise_multiplier, run.sample_rate, state.step, p.delta, p.accountant)
    result = {
        "name": config.name,
        "model": config.model.name,
        "group": describe_group(config.model.name, **run.options),
        "num_params": run.num_params,
        "dataset": data.name,
        "train_size": run.train_size,
        "val_size": len(data.val_y),
        "test_size": len(data.test_y),
        "target_epsilon": p.target_epsilon,
        "delta": p.delta,
        "accountant": p.accountant,
        "noise_multiplier": run.plan.noise_multiplier,
        "sample_rate": run.sample_rate,
        "expected_batch_size": t.batch_size,
        "max_grad_norm": p.max_grad_norm,
        "augmult": t.augmult,
        "steps": state.step,
        "epsilon": spent,
        "noise_source": "secure" if p.secret_seed is None else "fixed secret_seed (reproducible, NOT private)",
        "score_noise": p.score_noise,
        "score_releases": releases,
        "not_covered_by_epsilon": not_covered_by_epsilon(run),
        "val_accuracy": val_acc,
        "best_val_accuracy": max(best_val, val_acc),
        "test_accuracy": test_acc,
        "wall_time_s": wall,
        "samples_per_s": totals.samples_per_s,
        "device": str(run.device),
        "workers": run.comm.world_size,
        "restarts": state.restarts,
        "package_version": __version__,
        "torch_version": torch.__version__,
        "history": state.history,
        "config": config_to_dict(config),
    }
    if run.canaries is not None:  # never a release: eqdp_ray.audit keeps it inside audit.json only
        result["audit"] = {"canaries": run.canaries.count, "steps_observed": run.canaries.steps_observed}
    log(
        f"[eqdp-ray] done: val acc {val_acc:.4f}, test acc {test_acc:.4f}, eps spent {format_epsilon(spent)} "
        f"(target {format_epsilon(p.target_epsilon)}), {wall:.1f} s"
    )
    return result
