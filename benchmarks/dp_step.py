"""Cost of a DP-SGD step against a non-private step, side by side in one process.

    python benchmarks/dp_step.py --model {eq_resnet9,resnet9,wrn16_4} [--repeats 5] [--threads 2] [--device cpu]

Models on 3x32x32 input: the paper's equivariant ResNet-9 (D4 -> D2, layout 16/32/64), ResNet-9
with GroupNorm (Klause et al.) and WRN-16-4 with GroupNorm (De et al.). Variants:
  a   non-private step, 64 images          a4  non-private step, 256 images
  b   our DP step, 64 examples, K=1        d   our DP step, 64 examples x K=4
  c   torch.func vmap(grad) (the paper's code), as b    e   route c over the same 64 x 4
  o   Opacus's hooks (GradSampleModule), as b          o4  Opacus's hooks over the same 64 x 4
  O   o in a process of its own with glibc's default allocator (Opacus as users run it)   O4  as o4
  bf  b with the filter-gradient routes fixed by size, as before they were timed       df  d likewise
c and e run for the equivariant model (the paper's route); o, o4, O, O4 where Opacus accepts the
model (it refuses escnn-based layers, which own buffers); o and o4 share this process's heap reuse
(train.memory.reuse_freed_memory, as in training), O and O4 do not. Every DP variant clips and adds
noise the same way; they differ in how per-example gradients are computed. b and d first run
until every layer's filter-gradient route is chosen (timed on the first calls, as in training). Variants run
interleaved (each round runs each once). Prints median seconds, the peak extra memory of one
step, and each ratio as the median of per-round ratios with its range over rounds.
Targets: equivariant b/a <= 1.15, d/a4 <= 1.15, c/b >= 1.3, e/d >= 10;
conventional b/a <= 1.2, d/a4 <= 1.2, o/b >= 2, o4/d >= 2 (also printed for O, O4). Every lead
ratio (c/b, e/d, o/b, ...) is printed with its ceiling over the non-private step (c/a, e/a4, ...):
no DP step is cheaper than the non-private step it builds on. --examples 2 --repeats 1 is the
test suite's size.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import threading
import time
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")

from eqdp_ray.models import build_model  # noqa: E402
from eqdp_ray.privacy import (  # noqa: E402
    PerExampleGradients,
    add_gaussian_noise,
    clip_and_sum,
    grad_samplers,
    noise_generator,
)
from eqdp_ray.train.memory import reuse_freed_memory  # noqa: E402

LR = 1e-4  # keeps weights stable on random data; the paper's lr 2 diverges there and slows every step


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks")] + [
        (name, ctypes.c_size_t) for name in ("fsmblks", "uordblks", "fordblks", "keepcost")
    ]


def _live_heap_bytes():
    """glibc's bytes in use (heap plus mmapped blocks), or None off glibc.

    With freed memory kept for reuse (as the train loop sets up on CPU) the resident size no
    longer falls after a step, so it cannot show one step's peak; the bytes in use can.
    """
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2

    def live() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd

    return live


class PeakMemory:
    """Peak memory in use above the level at entry (CPU: glibc's bytes in use, sampled; CUDA: the allocator)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()
        self._live = _live_heap_bytes() or self._rss

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._live() - self.base)
            time.sleep(0.002)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self._live()
            self.thread = threading.Thread(target=self._watch, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self.thread.join()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


MODELS = {
    "eq_resnet9": (
        "equivariant ResNet-9 D4->D2 16/32/64",
        dict(group="dihedral", order=4, layout=(16, 32, 64), restrict=2),
    ),
    "resnet9": ("ResNet-9 GN", {}),
    "wrn16_4": ("WRN-16-4 GN", {}),
}


def make_model(name: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, in_channels=3, num_classes=10, **MODELS[name][1]).to(device)


def non_private_step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def our_dp_step(gradients, optimizer, params, x, y, k, generator):
    per_example, _ = gradients(x, y, k, defer=True)
    summed, _ = clip_and_sum(per_example, 2.0)
    noisy = add_gaussian_noise(summed, 1.0, 2.0, generator)
    for p, g in zip(params, noisy):
        p.grad = g / (len(y) // k)
    optimizer.step()


def vmap_dp_step(model, optimizer, params, x, y, k, generator):
    """The route of the paper's code: torch.func vmap over grad of a functional call."""
    from torch.func import functional_call, grad, vmap

    names = [n for n, _ in model.named_parameters()]
    detached = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],), tie_weights=False), yi[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(detached, x, y)
    summed, _ = clip_and_sum([per_example[n] for n in names], 2.0, k)
    noisy = add_gaussian_noise(summed, 1.0, 2.0, generator)
    for p, g in zip(params, noisy):
        p.grad = g / (len(y) // k)
    optimizer.step()


def opacus_dp_step(model, optimizer, params, x, y, k, generator):
    """Opacus's hooks: a full backward (summed gradients too) that stores each row's gradient."""
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y, reduction="sum").backward()
    per_row = [p.grad_sample for p in params]
    for p in params:
        p.grad_sample = None
    summed, _ = clip_and_sum(per_row, 2.0, k)
    noisy = add_gaussian_noise(summed, 1.0, 2.0, generator)
    for p, g in zip(params, noisy):
        p.grad = g / (len(y) // k)
    optimizer.step()


def time_once(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def with_fixed_routes(step):
    """`step` with the filter-gradient routes fixed by size (GROUPED_CONV_MIN_POSITIONS), not timed."""
    fixed = grad_samplers.FilterGradientRoutes(timed=False)

    def run() -> None:
        timed, grad_samplers.FILTER_GRADIENT_ROUTES = grad_samplers.FILTER_GRADIENT_ROUTES, fixed
        try:
            step()
        finally:
            grad_samplers.FILTER_GRADIENT_ROUTES = timed

    return run


def measure_interleaved(variants: dict, repeats: int, device: torch.device) -> tuple[dict, dict, dict]:
    """Median seconds and peak memory per variant, and per-round times for the ratios.

    Every round runs each variant once, so a slow spell of a shared machine hits all of them
    alike; the ratios are then medians of ratios taken within one round.
    """
    peaks = {}
    for name, fn in variants.items():  # the peak memory of one step, which is also the warm-up step
        if isinstance(fn, SeparateProcessVariant):
            peaks[name] = fn.peak()
            continue
        with PeakMemory(device) as memory:
            fn()
            sync(device)
        peaks[name] = memory.peak
    rounds = {name: [] for name in variants}
    names = list(variants)
    for index in range(repeats):  # alternate the order so no variant always follows the same one
        for name in names if index % 2 == 0 else names[::-1]:
            fn = variants[name]
            seconds = time_once(fn, device)
            rounds[name].append(fn.seconds if isinstance(fn, SeparateProcessVariant) else seconds)
    medians = {name: statistics.median(times) for name, times in rounds.items()}
    return medians, peaks, rounds


def route(name: str, device: torch.device):
    """A model instance of its own for one route: hooks stay on the model they wrap and would tax the others."""
    model = make_model(name, device)
    return model, [p for p in model.parameters() if p.requires_grad], torch.optim.SGD(model.parameters(), lr=LR)


def make_batches(examples: int, device: torch.device):
    """Random images and labels: `examples` of them, and `examples` x 4 for the K=4 variants."""
    torch.manual_seed(1)
    x, y = torch.randn(examples, 3, 32, 32, device=device), torch.randint(0, 10, (examples,), device=device)
    x4, y4 = torch.randn(4 * examples, 3, 32, 32, device=device), torch.randint(0, 10, (4 * examples,), device=device)
    return x, y, x4, y4


def opacus_variants(name: str, device: torch.device, examples: int) -> dict:
    """Opacus's hooks as variants o and o4 (empty if Opacus refuses the model)."""
    from opacus.grad_sample import GradSampleModule

    model, params, optimizer = route(name, device)
    try:
        wrapped = GradSampleModule(model, loss_reduction="sum")
    except Exception as error:  # Opacus's own validation of the model
        print(f"Opacus hooks: refused ({type(error).__name__}: {' '.join(str(error).split())[:160]})")
        return {}
    generator = noise_generator(0)
    x, y, x4, y4 = make_batches(examples, device)
    return {
        "o": lambda: opacus_dp_step(wrapped, optimizer, params, x, y, 1, generator),
        "o4": lambda: opacus_dp_step(wrapped, optimizer, params, x4, y4, 4, generator),
    }


def _serve_opacus(connection, name: str, threads: int, device: str, examples: int) -> None:
    """A child process that never switches on heap reuse: Opacus as a user runs it, with glibc's defaults."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    variants = opacus_variants(name, torch.device(device), examples)
    connection.send(sorted(variants))
    while (request := connection.recv()) is not None:
        kind, variant = request
        if kind == "peak":
            with PeakMemory(torch.device(device)) as memory:
                variants[variant]()
                sync(torch.device(device))
            connection.send(memory.peak)
        else:
            connection.send(time_once(variants[variant], torch.device(device)))


class SeparateProcessVariant:
    """A variant run in another process; calling it runs one step there and keeps the time measured there."""

    def __init__(self, connection, variant: str) -> None:
        self.connection, self.variant, self.seconds = connection, variant, 0.0

    def peak(self) -> int:
        self.connection.send(("peak", self.variant))
        return self.connection.recv()

    def __call__(self) -> None:
        self.connection.send(("time", self.variant))
        self.seconds = self.connection.recv()


def start_opacus_process(name: str, threads: int, device: str, examples: int):
    """Variants O and O4 (Opacus in its own process, default allocator) and the process to stop afterwards."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_opacus, args=(child, name, threads, device, examples), daemon=True)
    process.start()
    names = parent.recv()
    variants = {f"O{n[1:]}": SeparateProcessVariant(parent, n) for n in names}
    return variants, lambda: (parent.send(None), process.join())


RATIOS = {  # (label, numerator, denominator, comparison, target): issue 16's targets
    "equivariant": [
        ("b/a", "b", "a", "<=", 1.15),
        ("d/a4", "d", "a4", "<=", 1.15),
        ("c/b", "c", "b", ">=", 1.3),
        ("e/d", "e", "d", ">=", 10.0),
    ],
    "conventional": [
        ("b/a", "b", "a", "<=", 1.2),
        ("d/a4", "d", "a4", "<=", 1.2),
        ("o/b", "o", "b", ">=", 2.0),
        ("o4/d", "o4", "d", ">=", 2.0),
        ("O/b", "O", "b", ">=", 2.0),
        ("O4/d", "O4", "d", ">=", 2.0),
    ],
}


def print_ratios(ratios: list, rounds: dict) -> None:
    """Each ratio as the median of per-round ratios, against its target.

    A "lead" ratio (another route over ours) is also printed over the non-private step: no DP step
    is cheaper than the non-private step it builds on (same forward and input-gradient backward, and
    per-example gradients cost at least the summed ones), so route/a bounds route/b from above.
    """
    for label, num, den, op, target in ratios:
        if num not in rounds or den not in rounds:
            continue
        per_round = [t_num / t_den for t_num, t_den in zip(rounds[num], rounds[den])]
        value = statistics.median(per_round)
        ok = value <= target if op == "<=" else value >= target
        line = (
            f"  {label:>5} = {value:6.2f}   target {op} {target}   {'met' if ok else 'NOT met'}"
            f"   (rounds {min(per_round):.2f}-{max(per_round):.2f})"
        )
        if op == ">=":
            plain = "a" if den == "b" else "a4"
            ceiling = statistics.median(t_num / t_a for t_num, t_a in zip(rounds[num], rounds[plain]))
            line += f"   ceiling {num}/{plain} = {ceiling:.2f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="eq_resnet9")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--examples", type=int, default=64, help="examples per step (x4 inputs at K=4)")
    parser.add_argument("--skip-vmap-k4", action="store_true", help="skip variant e (slow on some CPUs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    equivariant = args.model == "eq_resnet9"
    stop_opacus_process = None
    if not equivariant:  # started first: the child must not inherit this process's heap reuse
        separate, stop_opacus_process = start_opacus_process(args.model, args.threads, args.device, args.examples)
    model, _, optimizer = route(args.model, device)
    dp_model, dp_params, dp_optimizer = route(args.model, device)
    gradients = PerExampleGradients(dp_model)
    if device.type == "cpu":
        reuse_freed_memory()  # as the train loop does, for every variant in this process
    generator = noise_generator(0)
    x, y, x4, y4 = make_batches(args.examples, device)

    variants = {
        "a": lambda: non_private_step(model, optimizer, x, y),
        "a4": lambda: non_private_step(model, optimizer, x4, y4),
        "b": lambda: our_dp_step(gradients, dp_optimizer, dp_params, x, y, 1, generator),
        "d": lambda: our_dp_step(gradients, dp_optimizer, dp_params, x4, y4, 4, generator),
        "bf": with_fixed_routes(lambda: our_dp_step(gradients, dp_optimizer, dp_params, x, y, 1, generator)),
        "df": with_fixed_routes(lambda: our_dp_step(gradients, dp_optimizer, dp_params, x4, y4, 4, generator)),
    }
    if equivariant:
        vmap_model, vmap_params, vmap_optimizer = route(args.model, device)
        variants["c"] = lambda: vmap_dp_step(vmap_model, vmap_optimizer, vmap_params, x, y, 1, generator)
        if not args.skip_vmap_k4:
            variants["e"] = lambda: vmap_dp_step(vmap_model, vmap_optimizer, vmap_params, x4, y4, 4, generator)
    variants |= opacus_variants(args.model, device, args.examples)
    if stop_opacus_process is not None:
        variants |= separate
    print(
        f"{MODELS[args.model][0]}, {sum(p.numel() for p in dp_params):,} params, device {device}, "
        f"{args.threads} threads, torch {torch.__version__}, {args.examples} examples, "
        f"median of {args.repeats} interleaved rounds"
    )
    settled = grad_samplers.FILTER_GRADIENT_ROUTES.settle(lambda: (variants["b"](), variants["d"]()))
    chosen = sorted({times.chosen for times in grad_samplers.FILTER_GRADIENT_ROUTES.times.values()} - {None})
    print(f"filter-gradient routes chosen after {settled} warm-up steps each of b and d: {', '.join(chosen)}")
    try:
        results, peaks, rounds = measure_interleaved(variants, args.repeats, device)
    finally:
        if stop_opacus_process is not None:
            stop_opacus_process()
    for name in variants:
        print(f"  {name:>2}: {results[name]:8.3f} s   peak +{peaks[name] / 2**20:8.1f} MiB")
    print_ratios(RATIOS["equivariant" if equivariant else "conventional"], rounds)
    for fixed, timed in (("bf", "b"), ("df", "d")):  # what timing the routes gains
        per_round = [t_fixed / t_timed for t_fixed, t_timed in zip(rounds[fixed], rounds[timed])]
        print(
            f"  {fixed}/{timed} = {statistics.median(per_round):6.2f}   routes fixed by size over timed"
            f"   (rounds {min(per_round):.2f}-{max(per_round):.2f})"
        )


if __name__ == "__main__":
    main()
