"""Cost of a DP-SGD step against a non-private step, side by side in one process.

    python benchmarks/dp_step.py --model {eq_resnet9,resnet9,wrn16_4} [--repeats 5] [--threads 2] [--device cpu]

Models on 3x32x32 input: the paper's equivariant ResNet-9 (D4 -> D2, layout 16/32/64), ResNet-9
with GroupNorm (Klause et al.) and WRN-16-4 with GroupNorm (De et al.). Variants:
  a   non-private step, 64 images          a4  non-private step, 256 images
  b   our DP step, 64 examples, K=1        d   our DP step, 64 examples x K=4
  c   torch.func vmap(grad) (the paper's code), as b    e   route c over the same 64 x 4
  o   Opacus's hooks (GradSampleModule), as b          o4  Opacus's hooks over the same 64 x 4
c and e run for the equivariant model (the paper's route); o and o4 where Opacus accepts the
model (it refuses escnn-based layers, which own buffers). Every DP variant clips and adds
noise the same way; they differ in how per-example gradients are computed. Variants run
interleaved (each round runs each once). Prints median seconds, the peak extra memory of one
step, and each ratio as the median of per-round ratios with its range over rounds.
Targets: equivariant b/a <= 1.15, d/a4 <= 1.15, c/b >= 1.3, e/d >= 10;
conventional b/a <= 1.2, d/a4 <= 1.2, o/b >= 2, o4/d >= 2.
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
from eqdp_ray.privacy import PerExampleGradients, add_gaussian_noise, clip_and_sum, noise_generator  # noqa: E402

LR = 1e-4  # keeps weights stable on random data; the paper's lr 2 diverges there and slows every step


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks")] + [
        (name, ctypes.c_size_t) for name in ("fsmblks", "uordblks", "fordblks", "keepcost")
    ]


def _live_heap_bytes():
    """glibc's bytes in use (heap plus mmapped blocks), or None off glibc.

    With freed memory kept for reuse (as PerExampleGradients sets up on CPU) the resident size no
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


def measure_interleaved(variants: dict, repeats: int, device: torch.device) -> tuple[dict, dict, dict]:
    """Median seconds and peak memory per variant, and per-round times for the ratios.

    Every round runs each variant once, so a slow spell of a shared machine hits all of them
    alike; the ratios are then medians of ratios taken within one round.
    """
    peaks = {}
    for name, fn in variants.items():  # the peak memory of one step, which is also the warm-up step
        with PeakMemory(device) as memory:
            fn()
            sync(device)
        peaks[name] = memory.peak
    rounds = {name: [] for name in variants}
    names = list(variants)
    for index in range(repeats):  # alternate the order so no variant always follows the same one
        for name in names if index % 2 == 0 else names[::-1]:
            rounds[name].append(time_once(variants[name], device))
    medians = {name: statistics.median(times) for name, times in rounds.items()}
    return medians, peaks, rounds


def route(name: str, device: torch.device):
    """A model instance of its own for one route: hooks stay on the model they wrap and would tax the others."""
    model = make_model(name, device)
    return model, [p for p in model.parameters() if p.requires_grad], torch.optim.SGD(model.parameters(), lr=LR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="eq_resnet9")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-vmap-k4", action="store_true", help="skip variant e (slow on some CPUs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    equivariant = args.model == "eq_resnet9"
    model, _, optimizer = route(args.model, device)
    dp_model, dp_params, dp_optimizer = route(args.model, device)
    gradients = PerExampleGradients(dp_model)  # on CPU this also switches the process to heap reuse
    generator = noise_generator(0)
    torch.manual_seed(1)
    x64, y64 = torch.randn(64, 3, 32, 32, device=device), torch.randint(0, 10, (64,), device=device)
    x256, y256 = torch.randn(256, 3, 32, 32, device=device), torch.randint(0, 10, (256,), device=device)

    variants = {
        "a": lambda: non_private_step(model, optimizer, x64, y64),
        "a4": lambda: non_private_step(model, optimizer, x256, y256),
        "b": lambda: our_dp_step(gradients, dp_optimizer, dp_params, x64, y64, 1, generator),
        "d": lambda: our_dp_step(gradients, dp_optimizer, dp_params, x256, y256, 4, generator),
    }
    if equivariant:
        vmap_model, vmap_params, vmap_optimizer = route(args.model, device)
        variants["c"] = lambda: vmap_dp_step(vmap_model, vmap_optimizer, vmap_params, x64, y64, 1, generator)
        if not args.skip_vmap_k4:
            variants["e"] = lambda: vmap_dp_step(vmap_model, vmap_optimizer, vmap_params, x256, y256, 4, generator)
    opacus_model, opacus_params, opacus_optimizer = route(args.model, device)
    try:
        from opacus.grad_sample import GradSampleModule

        wrapped = GradSampleModule(opacus_model, loss_reduction="sum")
    except Exception as error:  # Opacus's own validation of the model
        print(f"Opacus hooks: refused ({type(error).__name__}: {' '.join(str(error).split())[:160]})")
    else:
        variants["o"] = lambda: opacus_dp_step(wrapped, opacus_optimizer, opacus_params, x64, y64, 1, generator)
        variants["o4"] = lambda: opacus_dp_step(wrapped, opacus_optimizer, opacus_params, x256, y256, 4, generator)
    print(
        f"{MODELS[args.model][0]}, {sum(p.numel() for p in dp_params):,} params, device {device}, "
        f"{args.threads} threads, torch {torch.__version__}, median of {args.repeats} interleaved rounds"
    )
    results, peaks, rounds = measure_interleaved(variants, args.repeats, device)
    for name in variants:
        print(f"  {name:>2}: {results[name]:8.3f} s   peak +{peaks[name] / 2**20:8.1f} MiB")
    if equivariant:
        ratios = [
            ("b/a", "b", "a", "<=", 1.15),
            ("d/a4", "d", "a4", "<=", 1.15),
            ("c/b", "c", "b", ">=", 1.3),
            ("e/d", "e", "d", ">=", 10.0),
        ]
    else:
        ratios = [
            ("b/a", "b", "a", "<=", 1.2),
            ("d/a4", "d", "a4", "<=", 1.2),
            ("o/b", "o", "b", ">=", 2.0),
            ("o4/d", "o4", "d", ">=", 2.0),
        ]
    for label, num, den, op, target in ratios:
        if num in results and den in results:
            per_round = [t_num / t_den for t_num, t_den in zip(rounds[num], rounds[den])]
            value = statistics.median(per_round)
            ok = value <= target if op == "<=" else value >= target
            print(
                f"  {label:>5} = {value:6.2f}   target {op} {target}   {'met' if ok else 'NOT met'}"
                f"   (rounds {min(per_round):.2f}-{max(per_round):.2f})"
            )


if __name__ == "__main__":
    main()
