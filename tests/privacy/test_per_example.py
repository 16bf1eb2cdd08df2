"""Per-example gradients must equal a loop of single-example backward passes, for every parameter."""

import itertools
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eqdp_ray._vendor.escnn import nn as enn
from eqdp_ray.models.layers import FieldGroupNorm, GroupPool, SteerableConv2d, make_gspace
from eqdp_ray.privacy import PerExampleGradients, UnsupportedModelError, check_model_supports_dp, grad_samplers


def small_equivariant_net(group: str, order: int, restrict: int | None) -> nn.Module:
    gspace = make_gspace(group, order)
    trivial = enn.FieldType(gspace, 2 * [gspace.trivial_repr])
    hidden = enn.FieldType(gspace, 2 * [gspace.regular_repr])
    layers = [SteerableConv2d(trivial, hidden), FieldGroupNorm(2, gspace.regular_repr.size, 2), nn.Mish()]
    if restrict is not None:
        sub_id = (None, restrict) if group == "dihedral" else restrict
        hidden = hidden.restrict(sub_id)
    out = enn.FieldType(hidden.gspace, 3 * [hidden.gspace.regular_repr])
    layers += [
        SteerableConv2d(hidden, out, stride=2),
        GroupPool(hidden.gspace.regular_repr.size),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.Mish(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    ]
    return nn.Sequential(*layers).double()


def loop_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[list[torch.Tensor]]:
    out = []
    params = [p for p in model.parameters() if p.requires_grad]
    for i in range(len(y)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        out.append([p.grad.detach().clone() for p in params])
    return out


def assert_averaged_equals_the_loop(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Each example's gradient (the mean over its k example-major rows) equals the single-example loop's."""
    singles = loop_gradients(model, x, y)
    grads, _ = PerExampleGradients(model)(x, y, multiplicity=k)
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(grads) == len(params)
    n = len(y) // k
    for j, (p, g) in enumerate(zip(params, grads)):
        assert g.shape == (n, *p.shape) and g.abs().sum() > 0
        for i in range(n):
            expected = torch.stack([singles[i * k + a][j] for a in range(k)]).mean(0)
            torch.testing.assert_close(g[i], expected, rtol=1e-9, atol=1e-11)
    return grads, singles


# 8x8 inputs: the first layer's 64 positions take the grouped-convolution route, the stride-2 layer's
# 16 the unfold route; 20x20 (400 positions, then 100 at stride 2) takes the grouped route for both.
@pytest.mark.parametrize("size", [8, 20])
@pytest.mark.parametrize("group,order,restrict", [("dihedral", 4, 2), ("cyclic", 8, None), ("dihedral", 1, None)])
def test_per_example_gradients_match_single_example_loop(group, order, restrict, size):
    torch.manual_seed(0)
    model = small_equivariant_net(group, order, restrict)
    x = torch.randn(5, 2, size, size, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4])
    expected = loop_gradients(model, x, y)
    grads, logits = PerExampleGradients(model)(x, y)
    params = [p for p in model.parameters() if p.requires_grad]
    assert len(grads) == len(params)
    for j, (p, g) in enumerate(zip(params, grads)):
        assert g.shape == (5, *p.shape)
        for i in range(5):
            torch.testing.assert_close(g[i], expected[i][j], rtol=1e-9, atol=1e-11)
    assert logits.shape == (5, 5)


def test_per_example_gradients_of_registry_models():
    from eqdp_ray.models import build_model

    torch.manual_seed(1)
    for name, options in [
        ("eq_resnet9", dict(group="dihedral", order=4, layout=(2, 4, 4), restrict=2)),
        ("resnet9", dict(width=0.125, num_groups=2)),
        ("wrn16_4", dict(width=1, depth=10, num_groups=4)),
    ]:
        model = build_model(name, in_channels=1, num_classes=3, **options).double()
        x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
        y = torch.tensor([0, 1, 2])
        expected = loop_gradients(model, x, y)
        grads, _ = PerExampleGradients(model)(x, y)
        for j, g in enumerate(grads):
            for i in range(3):
                torch.testing.assert_close(g[i], expected[i][j], rtol=1e-8, atol=1e-10)


def test_batchnorm_is_refused_with_a_clear_message():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(UnsupportedModelError, match="BatchNorm2d.*GroupNorm"):
        check_model_supports_dp(model)
    with pytest.raises(UnsupportedModelError):
        PerExampleGradients(model)


def test_layer_without_rule_is_refused():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.scale

    with pytest.raises(UnsupportedModelError, match="no per-example gradient rule"):
        check_model_supports_dp(nn.Sequential(nn.Linear(2, 2), Custom()))


@pytest.mark.parametrize("chunk_bytes", [None, 1])  # 1: filter gradients formed one example at a time
@pytest.mark.parametrize("size", [8, 20])
@pytest.mark.parametrize("group,order,restrict", [("dihedral", 4, 2), ("cyclic", 4, None)])
def test_augmentation_multiplicity_averages_each_examples_inputs(
    group, order, restrict, size, chunk_bytes, monkeypatch
):
    if chunk_bytes is not None:
        monkeypatch.setitem(grad_samplers.FILTER_GRADIENT_CHUNK_BYTES, "cpu", chunk_bytes)
    torch.manual_seed(2)
    model = small_equivariant_net(group, order, restrict)
    k = 3
    x = torch.randn(4 * k, 2, size, size, dtype=torch.float64)  # example-major: rows 0..2 are example 0
    y = torch.tensor([0, 1, 2, 3]).repeat_interleave(k)
    assert_averaged_equals_the_loop(model, x, y, k)


def test_parameters_get_no_summed_gradient_and_hooks_can_be_removed():
    model = small_equivariant_net("dihedral", 4, None)
    engine = PerExampleGradients(model)
    engine(torch.randn(2, 2, 8, 8, dtype=torch.float64), torch.tensor([0, 1]))
    assert all(p.grad is None for p in model.parameters())
    engine.detach()
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


ROUTES = sorted(grad_samplers.FilterGradientRoutes.ROUTES)


@pytest.mark.parametrize("kernel,stride,padding,k", [(3, 1, 1, 1), (5, 1, 2, 2), (5, 2, 2, 3), (3, 2, 0, 2)])
def test_every_filter_gradient_route_equals_the_loop(kernel, stride, padding, k, monkeypatch):
    """Every route that applies to the geometry (the canvas routes: size-keeping ones only) gives every
    example's dense-filter gradient, summed over its K inputs, also when formed a few examples at a time."""
    torch.manual_seed(3)
    gspace = make_gspace("dihedral", 2)
    layer = SteerableConv2d(
        enn.FieldType(gspace, 2 * [gspace.regular_repr]),
        enn.FieldType(gspace, 3 * [gspace.regular_repr]),
        kernel_size=kernel,
        padding=padding,
        stride=stride,
    ).double()
    n = 3
    x = torch.randn(n * k, layer.in_type.size, 11, 11, dtype=torch.float64)
    weights = torch.randn_like(layer(x))  # a fixed linear loss: its gradient w.r.t. the output
    expected = []
    for i in range(n):
        dense = layer.expand().detach().requires_grad_(True)
        out = F.conv2d(x[i * k : (i + 1) * k], dense, stride=stride, padding=padding)
        (out * weights[i * k : (i + 1) * k]).sum().backward()
        expected.append(dense.grad)
    expected = torch.stack(expected)
    geometry = grad_samplers.ConvGeometry.of_steerable(layer)
    applicable = grad_samplers.FilterGradientRoutes.applicable(geometry, x, weights)
    assert ("shifted" in applicable) == ("canvas" in applicable) == (stride == 1)
    for name in applicable:
        route = grad_samplers.FilterGradientRoutes.ROUTES[name]
        torch.testing.assert_close(route(geometry, x, weights, k), expected, rtol=1e-9, atol=1e-11)
    monkeypatch.setattr(grad_samplers, "PATCH_CHUNK_BYTES", 1)  # patches formed one example at a time
    for name in ("shifted", "patches"):  # canvases for two examples at a time: the last chunk is shorter
        monkeypatch.setitem(grad_samplers.CANVAS_CHUNK_BYTES, name, 2 * 8 * x[0].numel() * (k + 6 * kernel**2))
    for name in applicable:
        route = grad_samplers.FilterGradientRoutes.ROUTES[name]
        torch.testing.assert_close(route(geometry, x, weights, k), expected, rtol=1e-9, atol=1e-11)
    routes = grad_samplers.FilterGradientRoutes(trials=1)
    monkeypatch.setattr(grad_samplers, "FILTER_GRADIENT_ROUTES", routes)
    for _ in range(len(applicable) + 1):  # each route once, timed, then the fastest
        got = grad_samplers.per_example_filter_gradients(geometry, x, weights, k)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)
    (times,) = routes.times.values()
    assert times.chosen in applicable and sorted(times.seconds) == sorted(applicable)


def test_settle_runs_the_work_until_every_shape_has_its_route(monkeypatch):
    """Benchmarks time after ``settle``: it repeats the work until no shape met is still being timed,
    and counts the repeats; a second shape met later is settled by the next call."""
    calls = []

    def route(geometry, activations, backprops, multiplicity):
        calls.append(activations.shape[-1])
        return torch.zeros(1)

    routes = grad_samplers.FilterGradientRoutes(trials=2)
    monkeypatch.setattr(routes, "ROUTES", dict.fromkeys(grad_samplers.FilterGradientRoutes.ROUTES, route))
    geometry = grad_samplers.ConvGeometry((3, 3), padding=(1, 1))
    small = lambda: routes(geometry, torch.zeros(4, 2, 5, 5), torch.zeros(4, 3, 5, 5), 1)  # noqa: E731
    large = lambda: routes(geometry, torch.zeros(4, 2, 7, 7), torch.zeros(4, 3, 7, 7), 1)  # noqa: E731
    assert routes.settled  # nothing met yet
    assert routes.settle(small) == 11  # 5 routes x 2 trials, then the call that takes the choice
    assert routes.settled and len(calls) == 11
    large()
    assert not routes.settled
    assert routes.settle(lambda: (small(), large())) == 10  # the large shape's 9 remaining trials, then its choice
    assert routes.settle(small, most=3) == 1  # settled already: one call
    other = lambda: routes(geometry, torch.zeros(4, 2, 9, 9), torch.zeros(4, 3, 9, 9), 1)  # noqa: E731
    assert routes.settle(other, most=3) == 3 and not routes.settled  # stopped at `most`


def test_route_choice_times_each_route_then_keeps_the_fastest(monkeypatch):
    """On the CPU each applicable route is run `trials` times, round-robin, as the work of those calls;
    every later call for that shape (and batch sizes within its power of 2) takes the least-time route.
    Another shape is timed afresh."""
    calls = []

    def route_taking(name, seconds):
        def route(geometry, activations, backprops, multiplicity):
            calls.append(name)
            time.sleep(seconds)
            return torch.full((1,), float(len(calls)))

        return route

    delays = {"grouped": 0.07, "unfold": 0.001, "loop": 0.06, "shifted": 0.05, "canvas": 0.08}
    routes = grad_samplers.FilterGradientRoutes(trials=2)
    monkeypatch.setattr(routes, "ROUTES", {name: route_taking(name, t) for name, t in delays.items()})
    geometry = grad_samplers.ConvGeometry((3, 3), padding=(1, 1))
    x, grads = torch.zeros(4, 2, 5, 5), torch.zeros(4, 3, 5, 5)
    results = [routes(geometry, x, grads, 1)[0].item() for _ in range(13)]
    assert results == list(range(1, 14))  # every call does the work once
    assert sorted(calls[:10]) == sorted(2 * list(delays)) and set(calls[:5]) == set(delays)
    assert calls[10:] == ["unfold"] * 3
    routes(geometry, torch.zeros(7, 2, 5, 5), torch.zeros(7, 3, 5, 5), 1)  # 7 examples: 4's power of 2
    assert calls[13:] == ["unfold"] and len(routes.times) == 1
    strided = grad_samplers.ConvGeometry((3, 3), stride=(2, 2), padding=(1, 1))
    for _ in range(3):
        routes(strided, x, grads[..., :3, :3], 1)
    assert set(calls[14:]) == {"grouped", "unfold", "loop"}  # no canvas routes for a strided geometry
    routes.forced = "canvas"
    routes(geometry, x, grads, 1)
    assert calls[-1] == "canvas"


@pytest.mark.parametrize("unfold_seconds, chosen", [(0.031, "unfold"), (0.06, "grouped")])
def test_route_choice_keeps_the_fixed_rules_route_unless_clearly_beaten(unfold_seconds, chosen, monkeypatch):
    """Two noisy trials cannot tell routes within ROUTE_MARGIN apart: there the fixed rule's route (unfold,
    for 25 positions) is kept; a route faster by more than the margin replaces it."""
    delays = {"grouped": 0.03, "unfold": unfold_seconds, "loop": 0.09}
    routes = grad_samplers.FilterGradientRoutes(trials=2)
    monkeypatch.setattr(routes, "ROUTES", {name: (lambda *a, t=t: time.sleep(t)) for name, t in delays.items()})
    geometry = grad_samplers.ConvGeometry((3, 3), stride=(2, 2))  # no canvas routes
    x, grads = torch.zeros(4, 2, 11, 11), torch.zeros(4, 3, 5, 5)
    assert routes.fixed_choice(grads, 1) == "unfold"
    for _ in range(7):
        routes(geometry, x, grads, 1)
    (times,) = routes.times.values()
    assert times.chosen == chosen


def test_route_choice_counts_what_the_caller_does_with_the_layout(monkeypatch):
    """A route whose layout makes the caller's next step (a basis transpose, a copy) dear loses to a slower
    route whose layout makes it cheap; each kind of caller is timed apart, and the caller gets its result."""
    delays = {"grouped": 0.04, "unfold": 0.001, "loop": 0.02}  # route alone: unfold is fastest
    consume_delays = {"grouped": 0.0, "unfold": 0.06, "loop": 0.03}  # with the caller's work: grouped
    routes = grad_samplers.FilterGradientRoutes(trials=1)
    stubs = {
        name: (lambda *args, name=name: (time.sleep(delays[name]), name)[1]) for name in ("grouped", "unfold", "loop")
    }
    monkeypatch.setattr(routes, "ROUTES", stubs)
    geometry = grad_samplers.ConvGeometry((3, 3), stride=(2, 2))  # no canvas routes
    x, grads = torch.zeros(4, 2, 5, 5), torch.zeros(4, 3, 2, 2)

    def consume(made_by):
        time.sleep(consume_delays[made_by])
        return "consumed " + made_by

    for _ in range(4):
        last = routes(geometry, x, grads, 1, consume, ("transpose",))
    assert last == "consumed grouped"
    for _ in range(4):
        plain = routes(geometry, x, grads, 1)
    assert plain == "unfold" and len(routes.times) == 2


@pytest.mark.parametrize("orbit_seconds, chosen", [(0.001, "orbit"), (0.028, "dense")])
def test_strategy_choice_times_each_strategy_at_its_routes_best(orbit_seconds, chosen, monkeypatch):
    """A steerable layer's strategies are chosen like routes, one level up: each strategy runs until its own
    routes are chosen (those runs are not timed: a route trial is not the strategy at its best), then once
    timed; then the fastest, the preferred one kept unless beaten by more than ROUTE_MARGIN. Until then the
    engine is not settled. Off the CPU, or untimed, the preferred strategy; a forced one wins everywhere."""
    routes = grad_samplers.FilterGradientRoutes(trials=1)
    monkeypatch.setattr(routes, "ROUTES", {name: (lambda *args: None) for name in ("grouped", "unfold", "loop")})
    geometry = grad_samplers.ConvGeometry((3, 3), stride=(2, 2))  # three routes, no canvas
    x, grads = torch.zeros(4, 2, 5, 5), torch.zeros(4, 3, 2, 2)
    ran = []

    def strategy(name, seconds):
        def run():
            ran.append(name)
            routes(geometry, x, grads, 1, None, (name,))  # each strategy's routes are timed apart
            time.sleep(seconds)

        return run

    delays = {"dense": 0.03, "orbit": orbit_seconds, "symmetry": 0.05}
    strategies = {name: strategy(name, t) for name, t in delays.items()}
    layer = (geometry, x, grads, 1)
    for _ in range(12):
        assert not routes.settled or not ran
        routes.run_strategy(*layer, strategies, "dense")
    assert ran == 4 * ["dense"] + 4 * ["orbit"] + 4 * ["symmetry"]  # 3 route trials, then one timed run each
    assert not routes.settled
    assert routes.run_strategy(*layer, strategies, "dense") == chosen
    assert routes.settled and ran[-1] == chosen
    off_cpu = (geometry, x.to("meta"), grads.to("meta"), 1)
    assert routes.run_strategy(*off_cpu, strategies, "symmetry") == "symmetry" == ran[-1]
    assert len(routes.strategies) == 1  # nothing timed off the CPU
    untimed = grad_samplers.FilterGradientRoutes(timed=False)
    assert untimed.run_strategy(*layer, strategies, "orbit") == "orbit" and not untimed.strategies
    routes.forced_strategy = "symmetry"
    assert routes.run_strategy(*layer, strategies, "dense") == "symmetry" == ran[-1]


def test_off_the_cpu_the_route_is_fixed_by_the_positions(monkeypatch):
    """Where timing without synchronising would mislead (accelerators), the grouped convolution from
    GROUPED_CONV_MIN_POSITIONS contracted positions on, the unfold route below."""
    calls = []
    routes = grad_samplers.FilterGradientRoutes()
    stubs = {name: (lambda *args, name=name: calls.append(name)) for name in routes.ROUTES}
    monkeypatch.setattr(routes, "ROUTES", stubs)
    geometry = grad_samplers.ConvGeometry((3, 3), padding=(1, 1))
    x = torch.zeros(8, 2, 8, 8, device="meta")
    routes(geometry, x, torch.zeros(8, 3, 8, 8, device="meta"), 1)  # 64 positions
    routes(geometry, x[..., :4, :4], torch.zeros(8, 3, 4, 4, device="meta"), 2)  # 32
    assert calls == ["grouped", "unfold"] and not routes.times


def test_a_reproducible_engine_chooses_routes_by_shape_not_by_timing(monkeypatch):
    """Timed choices differ between runs (and routes in float rounding), so a run with fixed seeds
    must not time them: its gradients are the fixed rule's, bit for bit, and nothing is timed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 6 * 6, 2))
    x, y = torch.randn(4, 2, 6, 6), torch.tensor([0, 1, 1, 0])
    routes = grad_samplers.FilterGradientRoutes(trials=1)
    monkeypatch.setattr(grad_samplers, "FILTER_GRADIENT_ROUTES", routes)
    untimed, _ = PerExampleGradients(model, reproducible=True)(x, y)
    assert not routes.times and routes.timed  # nothing timed, and the setting restored
    fixed = grad_samplers.FilterGradientRoutes(timed=False)
    monkeypatch.setattr(grad_samplers, "FILTER_GRADIENT_ROUTES", fixed)
    by_shape, _ = PerExampleGradients(model)(x, y)
    assert all(torch.equal(a, b) for a, b in zip(untimed, by_shape))
    monkeypatch.setattr(grad_samplers, "FILTER_GRADIENT_ROUTES", routes)
    PerExampleGradients(model)(x, y)
    assert routes.times  # the default engine times the routes


def assert_steerable_rule_equals_the_loop(layer: SteerableConv2d, x: torch.Tensor, k: int) -> None:
    """The rule's per-example coefficient gradients (mean over each example's K rows of x) against
    backward passes one example at a time, for a random output gradient."""
    weights = torch.randn_like(layer(x))
    expected = []
    for i in range(x.shape[0] // k):
        layer.zero_grad()
        ((layer(x[i * k : (i + 1) * k]) * weights[i * k : (i + 1) * k]).sum() / k).backward()
        expected.append(layer.weight.grad.clone())
    got = grad_samplers.steerable_conv_rule(layer, [x], weights, k)[layer.weight]
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("filter_route", ["shifted", "grouped"])
@pytest.mark.parametrize("k", [1, 2])
def test_steerable_rule_with_mixed_field_types_equals_the_loop(k, filter_route, monkeypatch):
    """Several field types give several basis blocks: the general route (the expansion's vector-Jacobian
    product) must match the loop, as the one-block matrix product does for a single field type; on the
    shifted-products route (a permuted layout; stride 1 only) as on the others."""
    monkeypatch.setattr(grad_samplers.FILTER_GRADIENT_ROUTES, "forced", filter_route)
    torch.manual_seed(6)
    gspace = make_gspace("dihedral", 4)
    mixed_in = enn.FieldType(gspace, [gspace.trivial_repr, gspace.regular_repr, gspace.trivial_repr])
    mixed_out = enn.FieldType(gspace, [gspace.regular_repr, gspace.irrep(1, 1)])
    single = enn.FieldType(gspace, 2 * [gspace.regular_repr])
    for (in_type, out_type), stride in itertools.product([(mixed_in, mixed_out), (single, single)], (2, 1)):
        layer = SteerableConv2d(in_type, out_type, stride=stride).double()
        assert (grad_samplers._single_block_basis(layer) is None) == (in_type is mixed_in)
        assert_steerable_rule_equals_the_loop(layer, torch.randn(3 * k, in_type.size, 7, 7, dtype=torch.float64), k)


@pytest.mark.parametrize("filter_route", ROUTES)
@pytest.mark.parametrize("strategy", ["symmetry", "orbit", "dense"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize(
    "group,order,restrict,fields_in,size,padding",
    [
        ("dihedral", 4, None, "regular", 6, 1),
        ("dihedral", 4, 2, "regular", 5, 1),  # D4-regular inputs restricted to D2: 8 channels, 4 out
        ("cyclic", 4, None, "trivial", 6, 0),
        ("dihedral", 2, None, "regular", 7, 2),
    ],
)
def test_steerable_rule_by_basis_symmetry_equals_the_loop(
    group, order, restrict, fields_in, size, padding, k, strategy, filter_route, monkeypatch
):
    """The strategies that sum each filter gradient over the basis's grid symmetries (inside the contraction,
    from rotated and channel-permuted copies of the example; or after forming it, by a gather), and the dense
    transpose, against a loop of backward passes, in float64, on each filter-gradient route (where it applies)."""
    torch.manual_seed(7)
    monkeypatch.setattr(grad_samplers.FILTER_GRADIENT_ROUTES, "forced", filter_route)
    monkeypatch.setattr(grad_samplers.FILTER_GRADIENT_ROUTES, "forced_strategy", strategy)
    monkeypatch.setitem(grad_samplers.FILTER_GRADIENT_CHUNK_BYTES, "cpu", 1)  # and one example at a time
    monkeypatch.setattr(grad_samplers, "ORBIT_CHUNK_BYTES", 1)  # the orbit sum one output field at a time
    gspace = make_gspace(group, order)
    in_type = enn.FieldType(gspace, 2 * [getattr(gspace, f"{fields_in}_repr")])
    if restrict is not None:
        in_type = in_type.restrict((None, restrict))
    out_type = enn.FieldType(in_type.gspace, 3 * [in_type.gspace.regular_repr])
    layer = SteerableConv2d(in_type, out_type, padding=padding).double()
    x = torch.randn(3 * k, in_type.size, size, size, dtype=torch.float64)
    assert grad_samplers._exact_symmetries(layer, x, layer(x)) is not None
    taken = []
    strategy_of = grad_samplers._steerable_strategy
    monkeypatch.setattr(grad_samplers, "_steerable_strategy", lambda *a: taken.append(a[6]) or strategy_of(*a))
    assert_steerable_rule_equals_the_loop(layer, x, k)
    assert taken == [strategy]


def test_a_basis_without_exact_symmetries_takes_the_dense_transpose(monkeypatch):
    """C8's 45-degree rotations do not map the grid to itself; a checkpoint's basis that breaks the
    recorded symmetries (an older, unsymmetrized one) is caught bit for bit."""

    def symmetries(layer):
        x = torch.zeros(1, layer.in_type.size, 3, 3)
        return grad_samplers._exact_symmetries(layer, x, layer(x))

    c8 = make_gspace("cyclic", 8)
    regular = enn.FieldType(c8, [c8.regular_repr])
    assert symmetries(SteerableConv2d(regular, regular)) is None
    d4 = make_gspace("dihedral", 4)
    regular = enn.FieldType(d4, 2 * [d4.regular_repr])
    layer = SteerableConv2d(regular, regular)
    assert symmetries(layer) is not None
    basis = grad_samplers._single_block_basis(layer)
    with torch.no_grad():
        basis[:, 1] += 1e-7 * torch.randn_like(basis[:, 1])
    assert symmetries(layer) is None


def conventional_net(conv: nn.Conv2d, affine: bool = True) -> nn.Module:
    """conv -> GroupNorm -> Mish -> conv (bias) -> pool -> Linear (bias) -> Linear: every conventional rule."""
    return nn.Sequential(
        conv,
        nn.GroupNorm(2, conv.out_channels, affine=affine),
        nn.Mish(),
        nn.Conv2d(conv.out_channels, 3, 3, padding=1, bias=True),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(12, 5),
        nn.Mish(),
        nn.Linear(5, 4, bias=False),
    ).double()


CONV_CASES = {
    "3x3 pad 1": dict(kernel_size=3, padding=1),
    "stride 2, no padding, bias": dict(kernel_size=3, stride=2, bias=True),
    "5x5, stride 2, pad 2": dict(kernel_size=5, stride=2, padding=2),
    "1x1 stride 2 shortcut": dict(kernel_size=1, stride=2),
    "rectangular, dilated": dict(kernel_size=(3, 2), padding=(2, 1), dilation=2),
    "groups 2, bias": dict(kernel_size=3, padding=1, groups=2, bias=True),
    "same, even kernel": dict(kernel_size=4, padding="same"),
    "reflect padding": dict(kernel_size=3, padding=1, padding_mode="reflect"),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conventional_rules_equal_the_loop(case, k, route, monkeypatch):
    """nn.Conv2d (each geometry, on each filter-gradient route where it applies), nn.GroupNorm and
    nn.Linear give every example's gradient averaged over its K inputs, as a loop of single-input
    backward passes does."""
    monkeypatch.setattr(grad_samplers.FILTER_GRADIENT_ROUTES, "forced", route)
    monkeypatch.setattr(grad_samplers, "PATCH_CHUNK_BYTES", 1)  # the unfold route in chunks of one example
    options = dict(bias=False) | CONV_CASES[case]
    torch.manual_seed(4)
    model = conventional_net(nn.Conv2d(4, 6, **options))
    n = 3
    x = torch.randn(n * k, 4, 9, 9, dtype=torch.float64)
    y = torch.arange(n).repeat_interleave(k)
    assert_averaged_equals_the_loop(model, x, y, k)


def mixed_field_net() -> nn.Module:
    """Steerable layers with several field types in or out: every one takes the general expansion's vjp."""
    gspace = make_gspace("dihedral", 4)
    trivial = enn.FieldType(gspace, 2 * [gspace.trivial_repr])
    mixed = enn.FieldType(gspace, [gspace.regular_repr, gspace.irrep(1, 1), gspace.trivial_repr])
    regular = enn.FieldType(gspace, 2 * [gspace.regular_repr])
    return nn.Sequential(
        SteerableConv2d(trivial, mixed),
        nn.Mish(),
        SteerableConv2d(mixed, mixed, stride=2),
        nn.Mish(),
        SteerableConv2d(mixed, regular),
        FieldGroupNorm(2, gspace.regular_repr.size, 2),
        GroupPool(gspace.regular_repr.size),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 5),
    ).double()


@pytest.mark.parametrize("chunk_bytes", [None, 1])  # 1: the vjp vmapped over one example at a time
@pytest.mark.parametrize("k", [1, 2])
def test_a_model_of_mixed_field_types_equals_the_loop(k, chunk_bytes, monkeypatch):
    """The general route (the expansion's vector-Jacobian product) through a whole model, clipped sum included."""
    from eqdp_ray.privacy import clip_and_sum

    if chunk_bytes is not None:
        monkeypatch.setitem(grad_samplers.FILTER_GRADIENT_CHUNK_BYTES, "cpu", chunk_bytes)
    torch.manual_seed(10)
    model = mixed_field_net()
    steerable = [m for m in model if isinstance(m, SteerableConv2d)]
    assert all(grad_samplers._single_block_basis(m) is None for m in steerable)  # no one-block product
    n = 4
    x = (
        torch.randn(n * k, 2, 7, 7, dtype=torch.float64)
        * torch.logspace(-1, 1, n).repeat_interleave(k)[:, None, None, None]
    )
    y = torch.arange(n).repeat_interleave(k)
    grads, singles = assert_averaged_equals_the_loop(model, x, y, k)
    summed, norms = clip_and_sum(grads, max_norm := norms_median(grads))
    assert (norms > max_norm).any() and (norms < max_norm).any()
    for got, expected in zip(summed, clipped_sum_of_loop(singles, k, max_norm)):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


def test_conventional_rules_skip_frozen_and_absent_parameters():
    torch.manual_seed(5)
    model = conventional_net(nn.Conv2d(4, 6, 3, bias=True), affine=False)
    model[0].weight.requires_grad_(False)  # the bias alone stays trainable
    x, y = torch.randn(4, 4, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    singles = loop_gradients(model, x, y)
    grads, _ = PerExampleGradients(model)(x, y)
    params = [p for p in model.parameters() if p.requires_grad]
    assert params[0] is model[0].bias
    for j, g in enumerate(grads):
        for i in range(4):
            torch.testing.assert_close(g[i], singles[i][j], rtol=1e-9, atol=1e-11)


class _TwoBranches(nn.Module):
    """Two trainable first layers (backward stops at both), one of them frozen, outputs changed in place."""

    def __init__(self, freeze_first: bool) -> None:
        super().__init__()
        self.left, self.right = nn.Conv2d(2, 3, 3), nn.Conv2d(2, 3, 1)
        self.left.requires_grad_(not freeze_first)
        self.body = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Flatten())
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.left(x)
        left.mul_(2.0)  # in place, after the layer's output was taken as a place where backward may stop
        return self.head(self.body(left + self.right(x)[:, :, 1:-1, 1:-1]))


@pytest.mark.parametrize("freeze_first", [False, True])
def test_backward_that_stops_at_the_first_trainable_layers_misses_no_gradient(freeze_first):
    torch.manual_seed(6)
    model = _TwoBranches(freeze_first).double()
    x, y = torch.randn(4, 2, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    singles = loop_gradients(model, x, y)
    grads, _ = PerExampleGradients(model)(x, y)
    for j, g in enumerate(grads):
        assert g.abs().sum() > 0
        for i in range(4):
            torch.testing.assert_close(g[i], singles[i][j], rtol=1e-9, atol=1e-11)


class _SharedUses(nn.Module):
    """A layer called twice (its second call on a changed copy of its first output) and a weight two layers share."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.pool = nn.Flatten()
        self.head, self.tied = nn.Linear(3 * 4 * 4, 6), nn.Linear(3 * 4 * 4, 6, bias=False)
        self.tied.weight = self.head.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(F.avg_pool2d(self.conv(torch.tanh(self.conv(x))), 2))
        return self.head(features) + self.tied(features.flip(1))


@pytest.mark.parametrize("defer", [False, True])
def test_parameters_used_twice_get_the_sum_of_their_uses(defer, monkeypatch):
    """A layer called twice in one forward, and a weight shared by two layers, equal the loop, deferred or not."""
    from eqdp_ray.privacy import clip_and_sum, ghost_norms

    monkeypatch.setattr(ghost_norms, "GHOST_COST_RATIO", 10**9)  # deferred wherever a layer allows
    torch.manual_seed(9)
    model = _SharedUses().double()
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    singles = loop_gradients(model, x, y)
    grads, _ = PerExampleGradients(model)(x, y, defer=defer)
    assert all(isinstance(g, torch.Tensor) for g in grads)  # every parameter here is used twice
    for j, g in enumerate(grads):
        for i in range(4):
            torch.testing.assert_close(g[i], singles[i][j], rtol=1e-9, atol=1e-11)
    summed, _ = clip_and_sum(grads, max_norm := norms_median(grads))
    for got, expected in zip(summed, clipped_sum_of_loop(singles, 1, max_norm)):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


def test_a_layers_input_is_freed_once_its_rule_has_run(monkeypatch):
    """The inputs kept for the rules go as the backward goes, not at its end: peak memory."""
    import weakref

    from eqdp_ray.privacy import per_example

    kept, rule = [], per_example._formed_gradients

    def remember(module, activations, backprops, k):
        assert all(ref() is None for ref in kept)  # every earlier layer's input is gone already
        grads = rule(module, activations, backprops, k)
        kept.append(weakref.ref(activations[0]))
        return grads

    monkeypatch.setattr(per_example, "_formed_gradients", remember)
    model = conventional_net(nn.Conv2d(4, 6, 3, padding=1))
    PerExampleGradients(model)(torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2]))
    assert len(kept) == 5  # each trainable layer once: two convolutions, the GroupNorm, two Linear layers


def test_opacus_keeps_its_own_rules_for_plain_layers():
    """The benchmark's Opacus column must run Opacus's rules, not ours."""
    from opacus.grad_sample import GradSampleModule

    for layer in (nn.Conv2d, nn.Linear, nn.GroupNorm):
        assert GradSampleModule.GRAD_SAMPLERS[layer].__module__.startswith("opacus.")


def norms_median(grads: list) -> float:
    from eqdp_ray.privacy import per_example_norms

    return per_example_norms(grads).median().item() * 1.0001


def clipped_sum_of_loop(singles: list[list[torch.Tensor]], k: int, max_norm: float) -> list[torch.Tensor]:
    """Average each example's K single-input gradients, clip the example as a whole, sum: DP-SGD by the book."""
    n = len(singles) // k
    per_example = [
        [torch.stack([singles[i * k + a][j] for a in range(k)]).mean(0) for j in range(len(singles[0]))]
        for i in range(n)
    ]
    summed = [torch.zeros_like(g) for g in per_example[0]]
    for grads in per_example:
        norm = torch.cat([g.flatten() for g in grads]).norm()
        factor = min(1.0, max_norm / (norm.item() + 1e-6))
        summed = [s + factor * g for s, g in zip(summed, grads)]
    return summed


# nowhere: every gradient formed; shifts, unfold: ghost norms wherever a layer allows, the patches' Gram
# matrices by that route
@pytest.mark.parametrize("ghost", ["nowhere", "shifts", "unfold"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_deferred_clipped_sum_equals_clipping_each_example(case, k, ghost, monkeypatch):
    """Ghost norms and the clipped sum as one weighted weight gradient give DP-SGD's clipped sum exactly."""
    from eqdp_ray.privacy import clip_and_sum, ghost_norms
    from eqdp_ray.privacy.clipping import DeferredGradient

    monkeypatch.setattr(ghost_norms, "GHOST_COST_RATIO", 0.0 if ghost == "nowhere" else 10**9)
    monkeypatch.setattr(ghost_norms, "_grams_by_shifts_pay", lambda *args: ghost == "shifts")
    torch.manual_seed(6)
    model = conventional_net(nn.Conv2d(4, 6, **(dict(bias=False) | CONV_CASES[case])))
    n = 4
    x = (
        torch.randn(n * k, 4, 9, 9, dtype=torch.float64)
        * torch.tensor([0.01, 1.0, 3.0, 10.0]).repeat_interleave(k)[:, None, None, None]
    )
    y = torch.arange(n).repeat_interleave(k)
    singles = loop_gradients(model, x, y)
    grads, _ = PerExampleGradients(model)(x, y, multiplicity=k, defer=True)
    deferred = [g for g in grads if isinstance(g, DeferredGradient)]
    assert len(deferred) == (0 if ghost == "nowhere" else 4)  # both convolutions and both linear layers
    summed, norms = clip_and_sum(grads, max_norm := norms_median(grads))  # clips some examples, not others
    assert (norms > max_norm).any() and (norms < max_norm).any()
    for got, expected in zip(summed, clipped_sum_of_loop(singles, k, max_norm)):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("grams", ["shifts", "unfold"])
@pytest.mark.parametrize("k", [1, 3])
def test_ghost_norms_in_several_chunks_equal_the_loop(grams, k, monkeypatch):
    """Ghost norms formed a few examples at a time (PATCH_CHUNK_BYTES), the last chunk shorter, give the loop's
    norms and clipped sum; the chunk budget is read at call time, so this runs the chunked path."""
    from eqdp_ray.privacy import clip_and_sum, ghost_norms, per_example_norms

    monkeypatch.setattr(ghost_norms, "GHOST_COST_RATIO", 10**9)
    monkeypatch.setattr(ghost_norms, "_grams_by_shifts_pay", lambda *args: grams == "shifts")
    torch.manual_seed(11)
    model = conventional_net(nn.Conv2d(4, 6, 3, padding=1))
    n = 5
    x = (
        torch.randn(n * k, 4, 9, 9, dtype=torch.float64)
        * torch.logspace(-1, 1, n).repeat_interleave(k)[:, None, None, None]
    )
    y = torch.arange(n).repeat_interleave(k) % 4
    inputs, geometry = grad_samplers._conv2d_inputs(model[0], x)
    two_examples = 2 * ghost_norms.patch_gram_bytes(inputs, geometry, (9, 9), k) + 1  # of the first convolution
    monkeypatch.setattr(grad_samplers, "PATCH_CHUNK_BYTES", two_examples)
    chunks, patch_grams = [], ghost_norms.patch_grams

    def counted(x, *args):
        chunks.append(x.shape[0] // args[-1])
        return patch_grams(x, *args)

    monkeypatch.setattr(ghost_norms, "patch_grams", counted)
    singles = loop_gradients(model, x, y)
    grads, _ = PerExampleGradients(model)(x, y, multiplicity=k, defer=True)
    assert chunks[-3:] == [2, 2, 1], chunks  # the first convolution (backward reaches it last), in 3 chunks
    assert len(chunks) >= 6 and max(chunks) <= 2  # and the second in at least 3
    loop_norms = torch.stack(
        [
            torch.cat(
                [
                    torch.stack([singles[i * k + a][j] for a in range(k)]).mean(0).flatten()
                    for j in range(len(singles[0]))
                ]
            ).norm()
            for i in range(n)
        ]
    )
    torch.testing.assert_close(per_example_norms(grads), loop_norms, rtol=1e-9, atol=1e-11)
    summed, norms = clip_and_sum(grads, max_norm := norms_median(grads))
    assert (norms > max_norm).any() and (norms < max_norm).any()
    for got, expected in zip(summed, clipped_sum_of_loop(singles, k, max_norm)):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


def test_deferred_gradients_of_the_conventional_models_keep_the_clipped_sum():
    from eqdp_ray.models import build_model
    from eqdp_ray.privacy import clip_and_sum

    torch.manual_seed(7)
    for name, options in [("resnet9", dict(width=0.25, num_groups=2)), ("wrn16_4", dict(width=1, depth=10))]:
        model = build_model(name, in_channels=3, num_classes=10, **options).double()
        engine = PerExampleGradients(model)
        for k in (1, 2):
            x, y = torch.randn(3 * k, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (3 * k,))
            formed, _ = engine(x, y, k)
            deferred, _ = engine(x, y, k, defer=True)
            assert any(not isinstance(g, torch.Tensor) for g in deferred)
            (expected, expected_norms), (got, norms) = clip_and_sum(formed, 1.0), clip_and_sum(deferred, 1.0)
            torch.testing.assert_close(norms, expected_norms, rtol=1e-10, atol=1e-12)
            for a, b in zip(got, expected):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_each_examples_deferred_contribution_is_at_most_c_in_float32():
    """Sensitivity of the deferred route as it runs (float32): what the weighted weight gradient adds for
    one example, scaled by the clip factor taken from its ghost norm, has norm <= C."""
    from eqdp_ray.models import build_model
    from eqdp_ray.privacy import clip_factors, per_example_norms
    from eqdp_ray.privacy.clipping import DeferredGradient

    torch.manual_seed(8)
    model = build_model("resnet9", in_channels=3, num_classes=10, width=0.5, num_groups=4)
    x, y = torch.randn(6, 3, 32, 32) * torch.logspace(-1, 1, 6)[:, None, None, None], torch.randint(0, 10, (6,))
    grads, _ = PerExampleGradients(model)(x, y, defer=True)
    assert any(isinstance(g, DeferredGradient) for g in grads)
    for max_norm in (1e-3, 0.1):
        factors = clip_factors(per_example_norms(grads), max_norm)
        assert (factors < 1).all()  # every example is clipped: each contribution should sit right at C
        for i in range(len(y)):
            alone = torch.zeros_like(factors)
            alone[i] = factors[i]
            parts = [g.weighted_sum(alone) if isinstance(g, DeferredGradient) else g[i] * factors[i] for g in grads]
            norm = torch.cat([p.flatten() for p in parts]).norm()
            assert norm <= max_norm and norm > max_norm * (1 - 1e-4)


def group_norm_loop(layer: nn.Module, x: torch.Tensor, grad_output: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Each example's scale and shift gradients (mean over its k rows) by single-row backward passes."""
    grads = []
    for i in range(len(x)):
        scale, shift = torch.autograd.grad(
            (layer(x[i : i + 1]) * grad_output[i : i + 1]).sum(), [layer.weight, layer.bias]
        )
        grads.append(torch.cat([scale, shift]))
    return list(torch.stack(grads).view(len(x) // k, k, -1).mean(1))


GROUP_NORMS = {
    "nn.GroupNorm": lambda: nn.GroupNorm(3, 12),
    "FieldGroupNorm": lambda: FieldGroupNorm(num_fields=6, field_size=2, num_groups=3),
}


@pytest.mark.parametrize("statistics", ["saved", "recomputed"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("kind", sorted(GROUP_NORMS))
def test_group_norm_rules_equal_the_loop(kind, k, statistics):
    """Scale and shift gradients from the forward's saved mean and 1/std (as the hooks pass them), or
    recomputed (as Opacus's registry calls the rule), equal single-row backward passes, off-centre inputs
    included (the rule subtracts mean x sum of gradients)."""
    torch.manual_seed(5)
    layer = GROUP_NORMS[kind]().double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    x = (3 + 2 * torch.randn(4 * k, 12, 5, 5, dtype=torch.float64)).requires_grad_()
    grad_output = torch.randn_like(x)
    saved = grad_samplers.saved_group_norm_statistics(layer, layer(x))
    assert len(saved) == 2  # torch kept them under the names the rule reads; else every step recomputes them
    activations = [x.detach()] + (saved if statistics == "saved" else [])
    rule = grad_samplers.AUGMENTATION_AWARE_RULES[type(layer)]
    grads = rule(layer, activations, grad_output, k)
    expected = group_norm_loop(layer, x.detach(), grad_output, k)
    for i, e in enumerate(expected):
        torch.testing.assert_close(torch.cat([grads[layer.weight][i], grads[layer.bias][i]]), e, rtol=1e-9, atol=1e-11)


def test_group_norm_statistics_are_read_only_off_a_group_norm_of_the_layers_groups():
    """The statistics come off the output's own group-norm node, with the layer's group count; anything else
    (an output some other op made) gets none, and the rule recomputes them."""
    layer = nn.GroupNorm(2, 4)
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    mean, rstd = grad_samplers.saved_group_norm_statistics(layer, layer(x))
    var, expected_mean = torch.var_mean(x.detach().reshape(3, 2, -1), dim=2, correction=0)
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(rstd, (var + layer.eps).rsqrt())
    assert grad_samplers.saved_group_norm_statistics(layer, layer(x) + 1) == []
    assert grad_samplers.saved_group_norm_statistics(nn.GroupNorm(4, 4), layer(x)) == []
