"""Each convolution's DP work against its non-private weight gradient, on the layer's real tensors.

    python benchmarks/layer_rules.py --model {resnet9,wrn16_4,eq_resnet9} [--k 1] [--examples 64] [--repeats 7]
        [--threads 2]

One DP step's forward and backward capture every convolution's input and output gradient; then, per
layer, interleaved (each round times each once) and as the median over rounds:
  summed     the summed weight gradient the non-private step forms
  formed     our per-example rule, then the clipped sum (``clip_and_sum``)
  deferred   ghost norms and the clipped sum as one weighted weight gradient
  shifts     ghost norms alone, the patches' Gram matrix from the input positions' Gram
  unfold     ghost norms alone, the patches' Gram matrix from the unfolded patches
and which of formed / deferred the DP step takes (``conv2d_ghost_norms_pay``) and which Gram route. For the
equivariant model, each steerable convolution:
  summed     the dense filter's summed weight gradient the non-private step forms
  rule       our steerable rule (its filter-gradient route chosen first, as in training), then the clipped sum
  grouped, unfold, loop, shifted, canvas   each filter-gradient route alone (those that apply)
and which strategy (dense, orbit, symmetry: ``steerable_conv_rule``) and filter route the rule took. Heap reuse is on, as in
training: without it the fresh pages of each large buffer cost more than the work (30 ms of 100 on the
16x16 layer). Timing a layer on its own tensors is steadier than a whole step on a shared machine;
dp_step.py gives the step.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

warnings.filterwarnings("ignore")

from dp_step import make_model  # noqa: E402

from eqdp_ray.models.layers import SteerableConv2d  # noqa: E402
from eqdp_ray.privacy import PerExampleGradients, clip_and_sum, ghost_norms, grad_samplers  # noqa: E402
from eqdp_ray.train.memory import reuse_freed_memory  # noqa: E402


def capture_conv_tensors(model: torch.nn.Module, examples: int, k: int, kind: type = torch.nn.Conv2d) -> list[tuple]:
    """(layer, input, output gradient) of every `kind` convolution in one DP step's backward."""
    captured, rule = [], grad_samplers.AUGMENTATION_AWARE_RULES[kind]

    def keep(layer, activations, backprops, multiplicity=1):
        captured.append((layer, activations[0], backprops))
        return rule(layer, activations, backprops, multiplicity)

    engine = PerExampleGradients(model)
    torch.manual_seed(1)
    x, y = torch.randn(examples * k, 3, 32, 32), torch.randint(0, 10, (examples * k,))
    # the timed route choices made first, as in training: else the first layer of each shape would carry them
    grad_samplers.FILTER_GRADIENT_ROUTES.settle(lambda: engine(x, y, k))
    grad_samplers.AUGMENTATION_AWARE_RULES[kind] = keep
    try:
        engine(x, y, k)  # formed everywhere: every layer passes through the rule
        engine.detach()
    finally:
        grad_samplers.AUGMENTATION_AWARE_RULES[kind] = rule
    return captured


def layer_routes(layer: torch.nn.Conv2d, x: torch.Tensor, backprops: torch.Tensor, k: int) -> tuple[dict, bool]:
    """The five timed routes of one layer, as callables, and whether its Gram matrices go by shifts."""
    padded, geometry = grad_samplers._conv2d_inputs(layer, x)
    deferred = lambda: ghost_norms._ConvWeightGradient(layer, padded, geometry, backprops, k)  # noqa: E731
    output_size = tuple(backprops.shape[2:])

    def norms_by(shifts: bool):
        def run():
            pay = ghost_norms._grams_by_shifts_pay
            ghost_norms._grams_by_shifts_pay = lambda *args: shifts
            try:
                return ghost_norms._ConvWeightGradient(layer, padded, geometry, backprops, k).squared_norms
            finally:
                ghost_norms._grams_by_shifts_pay = pay

        return run

    routes = {
        "summed": lambda: grad_samplers.summed_weight_gradient(geometry, padded, backprops, layer.weight, layer.groups),
        "formed": lambda: clip_and_sum([grad_samplers.conv2d_rule(layer, [x], backprops, k)[layer.weight]], 1.0),
        "deferred": lambda: clip_and_sum([deferred()], 1.0),
        "shifts": norms_by(True),
        "unfold": norms_by(False),
    }
    return routes, ghost_norms._grams_by_shifts_pay(padded, geometry, output_size)


def steerable_layer_routes(layer: SteerableConv2d, x: torch.Tensor, backprops: torch.Tensor, k: int) -> dict:
    """The summed dense weight gradient, our rule with the clipped sum, and each applicable filter route."""
    geometry = grad_samplers.ConvGeometry.of_steerable(layer)
    dense = layer.expand().detach()
    rule = grad_samplers.steerable_conv_rule
    routes = {
        "summed": lambda: grad_samplers.summed_weight_gradient(geometry, x, backprops, dense, 1),
        "rule": lambda: clip_and_sum([rule(layer, [x], backprops, k)[layer.weight]], 1.0),
    }
    for name in grad_samplers.FilterGradientRoutes.applicable(geometry, x, backprops):
        route = grad_samplers.FilterGradientRoutes.ROUTES[name]
        routes[name] = lambda route=route: route(geometry, x, backprops, k)
    return routes


def time_interleaved(routes: dict, repeats: int) -> dict[str, float]:
    """Median ms per route over `repeats` rounds, each round timing each route once (after one warm-up round)."""
    times = {name: [] for name in routes}
    for _ in range(repeats + 1):
        for name, run in routes.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[1:] or t) * 1e3 for name, t in times.items()}


def routes_taken(run) -> str:
    """The filter-gradient routes that one call of `run` takes (as the route choice now stands)."""
    routes, taken = grad_samplers.FILTER_GRADIENT_ROUTES, set()

    def spy(name, route):
        return lambda *args: taken.add(name) or route(*args)

    routes.ROUTES = {name: spy(name, route) for name, route in type(routes).ROUTES.items()}
    try:
        run()
    finally:
        del routes.ROUTES
    return ",".join(sorted(taken))


def strategy_taken(run) -> str:
    """The steerable rule's strategy (dense, orbit, symmetry) that one call of `run` takes, as the choice stands."""
    taken, strategy = [], grad_samplers._steerable_strategy
    grad_samplers._steerable_strategy = lambda *args: taken.append(args[6]) or strategy(*args)
    try:
        run()
    finally:
        grad_samplers._steerable_strategy = strategy
    return ",".join(taken)


def report_steerable_layers(model: torch.nn.Module, examples: int, k: int, repeats: int) -> None:
    """One line per steerable convolution, and the totals of the summed gradients and of our rule."""
    totals = dict.fromkeys(["summed", "rule"], 0.0)
    for layer, x, backprops in capture_conv_tensors(model, examples, k, SteerableConv2d):
        routes = steerable_layer_routes(layer, x, backprops, k)
        grad_samplers.FILTER_GRADIENT_ROUTES.settle(routes["rule"])  # each route timed, then the choice
        chosen = routes_taken(routes["rule"])
        strategy = strategy_taken(routes["rule"])
        ms = time_interleaved(routes, repeats)
        totals["summed"] += ms["summed"]
        totals["rule"] += ms["rule"]
        print(
            f"  {tuple(x.shape[1:])} -> {tuple(backprops.shape[1:])} kernel {layer.kernel_size} stride {layer.stride}: "
            + "  ".join(f"{name} {value:7.1f}" for name, value in ms.items())
            + f"   strategy {strategy}, filter route {chosen}"
        )
    print(f"total: summed {totals['summed']:.1f} ms, ours {totals['rule']:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["resnet9", "wrn16_4", "eq_resnet9"], default="resnet9")
    parser.add_argument("--k", type=int, default=1, help="augmentation multiplicity")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_memory()
    model = make_model(args.model, torch.device("cpu"))
    print(
        f"{args.model}, {args.examples} examples, K={args.k}, {args.threads} threads, torch {torch.__version__}, "
        f"ms per layer, median of {args.repeats} interleaved rounds"
    )
    if args.model == "eq_resnet9":
        report_steerable_layers(model, args.examples, args.k, args.repeats)
        return
    totals = dict.fromkeys(["summed", "ours"], 0.0)
    for layer, x, backprops in capture_conv_tensors(model, args.examples, args.k):
        routes, by_shifts = layer_routes(layer, x, backprops, args.k)
        ms = time_interleaved(routes, args.repeats)
        ghost = ghost_norms.conv2d_ghost_norms_pay(layer, backprops, args.k)
        totals["summed"] += ms["summed"]
        totals["ours"] += ms["deferred" if ghost else "formed"]
        print(
            f"  {tuple(x.shape[1:])} -> {tuple(backprops.shape[1:])} kernel {layer.kernel_size} stride {layer.stride}: "
            + "  ".join(f"{name} {value:7.1f}" for name, value in ms.items())
            + f"   step takes {'deferred' if ghost else 'formed'}, Gram by {'shifts' if by_shifts else 'unfold'}"
        )
    print(f"total: summed {totals['summed']:.1f} ms, ours {totals['ours']:.1f} ms")


if __name__ == "__main__":
    main()
