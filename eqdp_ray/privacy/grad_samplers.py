"""Per-example gradient rules that sum an example's K augmentations inside the contraction.

One rule per layer type the models use:

* ``SteerableConv2d``: per-example *filter* gradients, then the transpose of escnn's (linear)
  basis expansion maps them back to basis coefficients (one matrix product for one basis block,
  else ``torch.func.vmap``); where the basis has exact grid symmetries the filter gradient can be
  summed over them first (inside the contraction, or by a gather after it), which makes that
  transpose o times smaller. Which of these strategies runs is timed per layer shape, like the routes.
* ``nn.Conv2d``: the same per-example filter gradients; they are the parameter's gradient.
* ``FieldGroupNorm`` and ``nn.GroupNorm``: sums over each channel's (or field's) positions of
  the normalised input times the output gradient, from the forward's saved group statistics.
* ``nn.Linear``: one batched matrix product per layer.

Per-example filter gradients come by one of five routes that compute the same sum: a grouped
weight-gradient convolution with the examples as groups, unfold and a batched matrix product, a
per-example loop of the ordinary weight-gradient convolution, and (for size-keeping convolutions)
shifted products or patches copied from flat per-channel canvases. Which is fastest depends on the
layer's shape and the CPU; ``FilterGradientRoutes`` times them on the first calls. Every rule
takes the augmentation multiplicity K and returns the per-*example* gradient (the mean over each
example's K augmented inputs): the contraction over K happens before the
large per-example tensors are formed, which is what keeps a K=4 step cheap. Opacus has rules
for nn.Conv2d, nn.Linear and nn.GroupNorm too; ours replace them in ``PerExampleGradients``
(they are faster and K-aware) but are not registered with Opacus, whose own hooks stay Opacus's
(the benchmark compares against them). Importing this module registers the two rules for our
layers (with K=1) in Opacus's registry, which is what marks those layers as supported.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler
from torch import nn
from torch.func import vjp, vmap

from eqdp_ray.models.kernel_symmetry import KernelSymmetry, grid_permutation, symmetries_hold
from eqdp_ray.models.layers import FieldGroupNorm, SteerableConv2d

# Off the CPU (where routes are not timed, see ``FilterGradientRoutes``): below this many contracted
# positions per example (K x output height x width) the unfold route, from it on the grouped
# weight-gradient convolution (measured per layer of the three benchmark models, 2 threads, AMD
# EPYC, 2026-12-01: at 64 positions grouped 44 ms against unfold 61 ms; docs/BENCHMARKS.md).
GROUPED_CONV_MIN_POSITIONS = 64

# The unfold route forms a patch tensor (in x kernel area times the input); it is formed this
# many bytes at a time, and each chunk's product is written straight into the result. Ghost
# norms (ghost_norms.py) form their patches' Gram matrices under the same budget, reading it
# from here at call time.
PATCH_CHUNK_BYTES = 8 * 2**20

# The canvas routes (shifted products, canvas patches) lay a few examples' inputs and output gradients
# out (and, for the patches, their patches) this many bytes at a time, so that all kernel offsets'
# products read them from cache (measured on the Intel machine, 2026-12-03, the equivariant model's
# 16x16 layer at K=1: shifted products 72-82 ms in 2 MiB chunks against 127 ms for all 64 examples at
# once; canvas patches 112 ms in 4-16 MiB chunks against 152-156 in 0.5-2; docs/BENCHMARKS.md).
CANVAS_CHUNK_BYTES = {"shifted": 2 * 2**20, "patches": 8 * 2**20}


@dataclass(frozen=True)
class ConvGeometry:
    """What a 2-D convolution's weight gradient depends on besides its inputs and output gradients."""

    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @staticmethod
    def of_steerable(layer: SteerableConv2d) -> ConvGeometry:
        k, s, p = layer.kernel_size, layer.stride, layer.padding
        return ConvGeometry((k, k), (s, s), (p, p))

    @property
    def keeps_size(self) -> bool:
        """Stride 1, no dilation or groups, odd kernel with half its size as zero padding: output size = input size."""
        kh, kw = self.kernel
        return (
            self.stride == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and kh % 2 == 1
            and kw % 2 == 1
            and self.padding == (kh // 2, kw // 2)
        )


def _conv2d_inputs(layer: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, ConvGeometry]:
    """The input as the convolution saw it, and its geometry.

    Padding that is not symmetric zero padding ('same' with an even kernel, reflect, circular)
    is applied to the input here, as ``nn.Conv2d`` does, so the contraction needs no padding.
    """
    padding = layer.padding
    left, right, top, bottom = layer._reversed_padding_repeated_twice
    if layer.padding_mode != "zeros" or left != right or top != bottom:
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        x, padding = F.pad(x, layer._reversed_padding_repeated_twice, mode=mode), (0, 0)
    elif isinstance(padding, str):
        padding = (top, left)
    geometry = ConvGeometry(
        tuple(layer.kernel_size), tuple(layer.stride), tuple(padding), tuple(layer.dilation), layer.groups
    )
    return x, geometry


def per_example_filter_gradients(
    geometry: ConvGeometry,
    activations: torch.Tensor,
    backprops: torch.Tensor,
    multiplicity: int = 1,
    consume: Callable[[torch.Tensor], Any] | None = None,
    consumer: tuple = (),
) -> Any:
    """Sum over each example's K inputs of the gradient w.r.t. the filter: (N/K, out, in/groups, kh, kw).

    Every route computes the same sum; ``FILTER_GRADIENT_ROUTES`` picks the one that is fastest for
    the layer's shape on this machine. The result may be a permuted view (the shifted-products route).
    With `consume`, returns consume(result), and the route is chosen by the time of both: what the
    caller does next (a basis transpose, a copy) costs more on some routes' layouts than on others'.
    `consumer` names what `consume` does (hashable), so that each kind of caller is timed apart.
    """
    return FILTER_GRADIENT_ROUTES(geometry, activations, backprops, multiplicity, consume, consumer)


def unfolded_patches(
    x: torch.Tensor, geometry: ConvGeometry, multiplicity: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Each example's patches, (m x groups, in/groups x kh x kw, K x output positions), the K inputs side by side.

    One strided copy of a view of the padded input (into `out` where given) instead of ``F.unfold``, whose
    im2col loops over the batch and then needs a second copy to put the K inputs side by side: on the
    equivariant model's 16x16 104 -> 312 layer, unfold route 82 -> 65 ms at K=1, 338 -> 262 at K=4 (AMD
    Zen 3, 2 threads, docs/BENCHMARKS.md, 2026-12-04 night). The same numbers in the same layout.
    """
    (kh, kw), (sh, sw), (dh, dw), g = geometry.kernel, geometry.stride, geometry.dilation, geometry.groups
    ph, pw = geometry.padding
    padded = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    k, m, channels = multiplicity, x.shape[0] // multiplicity, x.shape[1] // g
    rows_out = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    cols_out = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    s0, s1, s2, s3 = padded.stride()
    view = padded.as_strided(
        (m, g, channels, kh, kw, k, rows_out, cols_out),
        (k * s0, channels * s1, s1, dh * s2, dw * s3, s0, sh * s2, sw * s3),
        padded.storage_offset(),
    )
    if out is None:
        out = x.new_empty(view.shape)
    out = out.view(view.shape)
    out.copy_(view)
    return out.view(m * g, channels * kh * kw, k * rows_out * cols_out)


def _filter_gradients_by_unfold(
    geometry: ConvGeometry, activations: torch.Tensor, backprops: torch.Tensor, multiplicity: int
) -> torch.Tensor:
    """Sum over K: the input's patches (``unfolded_patches``), one batched matmul per example and group.

    Formed a few examples at a time (PATCH_CHUNK_BYTES of patches, in one reused buffer), each product
    written straight into its rows of the result.
    """
    kh, kw = geometry.kernel
    g, k = geometry.groups, multiplicity
    n = activations.shape[0] // k
    channels_in, channels_out = activations.shape[1], backprops.shape[1]
    positions = backprops.shape[2] * backprops.shape[3]
    out = torch.empty(
        n, g, channels_out // g, channels_in // g * kh * kw, dtype=backprops.dtype, device=backprops.device
    )
    patch_bytes = k * channels_in * kh * kw * positions * backprops.element_size()
    chunk = max(1, PATCH_CHUNK_BYTES // patch_bytes) if backprops.device.type == "cpu" else n
    buffer = backprops.new_empty(min(n, chunk) * k * channels_in * kh * kw * positions)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rows = slice(start * k, stop * k)
        size = (stop - start) * k * channels_in * kh * kw * positions
        patches = unfolded_patches(activations[rows], geometry, k, buffer[:size])
        grads = backprops[rows].reshape(stop - start, k, g, channels_out // g, positions)
        grads = grads.permute(0, 2, 3, 1, 4) if k > 1 else grads[:, 0]  # the K inputs side by side
        grads = grads.reshape((stop - start) * g, -1, k * positions)
        torch.bmm(grads, patches.transpose(1, 2), out=out[start:stop].view((stop - start) * g, *out.shape[2:]))
    return out.view(n, channels_out, channels_in // g, kh, kw)


def _filter_gradients_by_grouped_conv(
    geometry: ConvGeometry, activations: torch.Tensor, backprops: torch.Tensor, multiplicity: int
) -> torch.Tensor:
    """Sum over K: one weight-gradient convolution with the N examples (times the layer's groups) as groups.

    Laid out as a batch of K images with N x channels each, a grouped convolution's weight
    gradient (which sums over the batch and the positions) is exactly each example's filter
    gradient summed over its K inputs; no patch tensor (kernel area times larger than the
    input) is ever formed.
    """
    n = activations.shape[0] // multiplicity
    channels_in, channels_out = activations.shape[1], backprops.shape[1]
    if multiplicity > 1:
        inputs = activations.reshape(n, multiplicity, channels_in, *activations.shape[2:]).transpose(0, 1)
        outputs = backprops.reshape(n, multiplicity, channels_out, *backprops.shape[2:]).transpose(0, 1)
    else:
        inputs, outputs = activations[None], backprops[None]
    inputs = inputs.reshape(multiplicity, n * channels_in, *activations.shape[2:])
    outputs = outputs.reshape(multiplicity, n * channels_out, *backprops.shape[2:])
    g = geometry.groups
    weight_shape = torch.empty(
        n * channels_out, channels_in // g, *geometry.kernel, dtype=backprops.dtype, device=backprops.device
    )
    filters = summed_weight_gradient(geometry, inputs, outputs, weight_shape, groups=n * g)
    return filters.view(n, channels_out, channels_in // g, *geometry.kernel)


def summed_weight_gradient(
    geometry: ConvGeometry, inputs: torch.Tensor, output_grads: torch.Tensor, weight: torch.Tensor, groups: int
) -> torch.Tensor:
    """A convolution's weight gradient summed over the batch and positions (`weight` gives its shape)."""
    _, grad, _ = torch.ops.aten.convolution_backward(
        output_grads,
        inputs,
        weight,
        None,
        list(geometry.stride),
        list(geometry.padding),
        list(geometry.dilation),
        False,
        [0, 0],
        groups,
        [False, True, False],
    )
    return grad


def _filter_gradients_by_example_loop(
    geometry: ConvGeometry, activations: torch.Tensor, backprops: torch.Tensor, multiplicity: int
) -> torch.Tensor:
    """Sum over K: the layer's own weight-gradient convolution once per example, over its K inputs.

    The convolution library's fastest kernels (those of ordinary training), at the price of one call
    per example; with K inputs and large maps each call is large enough for that not to matter.
    """
    k = multiplicity
    n = activations.shape[0] // k
    g = geometry.groups
    weight = torch.empty(
        backprops.shape[1], activations.shape[1] // g, *geometry.kernel, dtype=backprops.dtype, device=backprops.device
    )
    out = torch.empty(n, *weight.shape, dtype=backprops.dtype, device=backprops.device)
    for i in range(n):
        rows = slice(i * k, (i + 1) * k)
        out[i] = summed_weight_gradient(geometry, activations[rows], backprops[rows], weight, g)
    return out


@dataclass(frozen=True)
class _Canvas:
    """Where a size-keeping convolution's inputs and output gradients go on flat per-channel canvases.

    Each example's K inputs are laid out one after another, every row followed by pw zeros and every
    input by ph zero rows (which also serve as the next row's and the next input's padding); its output
    gradients likewise, on the same grid. The input at kernel offset (dy, dx) of every output position is
    then the input canvas read `offset(dy, dx)` further on: a view, not a patch tensor.
    """

    height: int
    width: int
    multiplicity: int
    padding: tuple[int, int]

    @property
    def row(self) -> int:
        return self.width + self.padding[1]

    @property
    def body(self) -> int:  # the K inputs with their trailing zero rows
        return self.multiplicity * (self.height + self.padding[0]) * self.row

    @property
    def lead(self) -> int:  # zeros read before the first input's first position
        return self.padding[0] * self.row + self.padding[1]

    @property
    def input_size(self) -> int:
        return self.lead + self.body + self.padding[1]

    @property
    def length(self) -> int:  # canvas positions where an output gradient can be nonzero
        return ((self.multiplicity - 1) * (self.height + self.padding[0]) + self.height) * self.row

    def offset(self, dy: int, dx: int) -> int:
        return self.lead + (dy - self.padding[0]) * self.row + (dx - self.padding[1])

    def write(self, canvas: torch.Tensor, values: torch.Tensor) -> None:
        """Lay m examples' K x (channels, height, width) values onto their canvases (m, channels, >= body)."""
        m, channels = canvas.shape[:2]
        h, w, k = self.height, self.width, self.multiplicity
        grid = canvas[:, :, : self.body].view(m, channels, k, h + self.padding[0], self.row)
        grid[..., :h, :w] = values.reshape(m, k, channels, h, w).transpose(1, 2)


def _canvas_chunks(
    geometry: ConvGeometry,
    activations: torch.Tensor,
    backprops: torch.Tensor,
    multiplicity: int,
    budget: int,
    extra_bytes: int = 0,
):
    """(canvas, rows of examples, input canvases, output-gradient canvases) for a few examples at a time.

    As many examples as fit `budget` bytes with `extra_bytes` per example besides the canvases;
    the buffers are reused from chunk to chunk, so their zeros are written once.
    """
    canvas = _Canvas(*activations.shape[2:], multiplicity, geometry.padding)
    n = activations.shape[0] // multiplicity
    channels_in, channels_out = activations.shape[1], backprops.shape[1]
    example_bytes = (channels_in * canvas.input_size + channels_out * canvas.body) * backprops.element_size()
    example_bytes += extra_bytes
    chunk = min(n, max(1, budget // example_bytes)) if backprops.device.type == "cpu" else n
    inputs = backprops.new_zeros(chunk, channels_in, canvas.input_size)
    grads = backprops.new_zeros(chunk, channels_out, canvas.body)
    for start in range(0, n, chunk):
        m = min(n, start + chunk) - start
        rows = slice(start * multiplicity, (start + m) * multiplicity)
        canvas.write(inputs[:m, :, canvas.lead :], activations[rows])
        canvas.write(grads[:m], backprops[rows])
        yield canvas, slice(start, start + m), inputs[:m], grads[:m, :, : canvas.length]


def _filter_gradients_by_shifted_products(
    geometry: ConvGeometry, activations: torch.Tensor, backprops: torch.Tensor, multiplicity: int
) -> torch.Tensor:
    """Sum over K, for size-keeping geometries: one batched matrix product per kernel offset, no patches.

    The filter gradient at kernel offset (dy, dx) is the product of the output-gradient canvas with the
    input canvas shifted by that offset (``_Canvas``), with the K inputs and all positions in its
    contraction. Returns a permuted view (n, out, in, kh, kw) of an (n, kh * kw, out, in) tensor.
    """
    kh, kw = geometry.kernel
    n = activations.shape[0] // multiplicity
    out = backprops.new_empty(n, kh * kw, backprops.shape[1], activations.shape[1])
    for canvas, examples, inputs, grads in _canvas_chunks(
        geometry, activations, backprops, multiplicity, CANVAS_CHUNK_BYTES["shifted"]
    ):
        for dy in range(kh):
            for dx in range(kw):
                offset = canvas.offset(dy, dx)
                shifted = inputs[:, :, offset : offset + canvas.length].transpose(1, 2)
                torch.bmm(grads, shifted, out=out[examples, dy * kw + dx])
    return out.permute(0, 2, 3, 1).unflatten(3, (kh, kw))


def _filter_gradients_by_canvas_patches(
    geometry: ConvGeometry, activations: torch.Tensor, backprops: torch.Tensor, multiplicity: int
) -> torch.Tensor:
    """Sum over K, for size-keeping geometries: patches copied from shifted canvases, one product per example.

    The unfold route's contraction (one (out, positions) x (positions, in x kh x kw) product per example,
    the efficient shape), with its patches gathered as kh x kw contiguous copies of the shifted input
    canvas (``_Canvas``) instead of by F.unfold, a few examples at a time.
    """
    kh, kw = geometry.kernel
    n = activations.shape[0] // multiplicity
    channels_in, channels_out = activations.shape[1], backprops.shape[1]
    length = _Canvas(*activations.shape[2:], multiplicity, geometry.padding).length
    patch_bytes = channels_in * kh * kw * length * backprops.element_size()
    out = backprops.new_empty(n, channels_out, channels_in * kh * kw)
    patches = None
    for canvas, examples, inputs, grads in _canvas_chunks(
        geometry, activations, backprops, multiplicity, CANVAS_CHUNK_BYTES["patches"], patch_bytes
    ):
        m = inputs.shape[0]
        if patches is None:
            patches = backprops.new_empty(m, channels_in, kh * kw, length)
        for dy in range(kh):
            for dx in range(kw):
                offset = canvas.offset(dy, dx)
                patches[:m, :, dy * kw + dx] = inputs[:, :, offset : offset + length]
        torch.bmm(grads, patches[:m].view(m, -1, length).transpose(1, 2), out=out[examples])
    return out.view(n, channels_out, channels_in, kh, kw)


# The fixed rule's route is kept unless another was faster by more than this factor: two timed trials
# on a noisy machine cannot tell routes within ~10% apart, and a wrong pick cost WRN-16-4 15% in one
# run (docs/BENCHMARKS.md, 2026-12-03 afternoon). As whole steps, margins 1.1 and 1.0 were within noise
# of each other on all three models (2026-12-03 evening).
ROUTE_MARGIN = 1.1


@dataclass
class _RouteTimes:
    """The timed calls of each candidate route for one layer shape, and the route chosen from them."""

    candidates: tuple[str, ...]
    preferred: str | None = None  # the fixed rule's route
    seconds: dict[str, list[float]] = field(default_factory=dict)
    chosen: str | None = None

    def next_route(self, trials: int) -> str:
        if self.chosen is None:
            counts = {name: len(self.seconds.get(name, ())) for name in self.candidates}
            fewest = min(self.candidates, key=counts.get)  # round-robin: a slow spell of the machine hits all
            if counts[fewest] < trials:
                return fewest
            least = {name: min(self.seconds[name]) for name in self.candidates}
            fastest = min(self.candidates, key=least.get)
            kept = self.preferred in least and least[self.preferred] <= ROUTE_MARGIN * least[fastest]
            self.chosen = self.preferred if kept else fastest
        return self.chosen


class FilterGradientRoutes:
    """Per-example filter gradients by the route that is fastest for the layer's shape on this machine.

    All routes compute the same sum (tests hold each to a per-example loop in float64); which is fastest
    depends on the CPU (on an Intel Xeon the shifted products took 105 ms where the grouped convolution
    took 190 on the equivariant model's 16x16 layer; on the AMD machine the grouped one led;
    docs/BENCHMARKS.md). On the CPU the first calls for a shape (layer, K, dtype, threads, and the
    batch size to within a power of 2) run each applicable route `trials` times, as part of the work,
    timed per example; later calls take the fastest (least time over its trials; the fixed rule's route
    where it is within ROUTE_MARGIN of the fastest), so the choice costs no extra computation. It depends
    on shapes and timing only, never on the data. Off the CPU (or
    not `timed`) the choice is fixed by GROUPED_CONV_MIN_POSITIONS, as it was before routes were timed.
    A run with fixed seeds must repeat bit for bit, so it is not timed (``untimed_filter_gradient_routes``).
    `forced` (a route name) makes every call take that route where it applies (tests); `forced_strategy`
    does the same for the steerable rule's strategies (``run_strategy``).
    """

    ROUTES = {
        "grouped": _filter_gradients_by_grouped_conv,
        "unfold": _filter_gradients_by_unfold,
        "shifted": _filter_gradients_by_shifted_products,
        "canvas": _filter_gradients_by_canvas_patches,
        "loop": _filter_gradients_by_example_loop,
    }

    def __init__(self, trials: int = 2, timed: bool = True) -> None:
        self.trials, self.timed, self.forced = trials, timed, None
        self.times: dict[tuple, _RouteTimes] = {}
        # The steerable rule's strategies (``steerable_conv_rule``), chosen the same way one level up.
        self.strategies: dict[tuple, _RouteTimes] = {}
        self.forced_strategy: str | None = None
        self._trial_calls = 0  # route calls that were timing trials: a strategy run that made one is not timed

    @property
    def settled(self) -> bool:
        """Whether every layer shape met so far has its route (and strategy) chosen: its timed calls are over."""
        tables = (self.times.values(), self.strategies.values())
        return all(times.chosen is not None for table in tables for times in table)

    def settle(self, calls: Callable[[], Any], most: int = 60) -> int:
        """Repeat `calls` (work that runs the rules) until every shape it meets has its route chosen, as the
        first steps of training do; how many times it ran (at most `most`). Benchmarks time after this."""
        for count in range(1, most + 1):
            calls()
            if self.settled:
                return count
        return most

    @staticmethod
    def applicable(geometry: ConvGeometry, activations: torch.Tensor, backprops: torch.Tensor) -> tuple[str, ...]:
        sizes_kept = geometry.keeps_size and activations.shape[2:] == backprops.shape[2:]
        return ("grouped", "unfold", "loop") + (("shifted", "canvas") if sizes_kept else ())

    @staticmethod
    def fixed_choice(backprops: torch.Tensor, multiplicity: int) -> str:
        positions = multiplicity * backprops.shape[2] * backprops.shape[3]
        return "grouped" if positions >= GROUPED_CONV_MIN_POSITIONS else "unfold"

    def __call__(
        self,
        geometry: ConvGeometry,
        activations: torch.Tensor,
        backprops: torch.Tensor,
        multiplicity: int,
        consume: Callable[[torch.Tensor], Any] | None = None,
        consumer: tuple = (),
    ) -> Any:
        """The filter gradients by the chosen route, or consume(them) (see ``per_example_filter_gradients``)."""
        candidates = self.applicable(geometry, activations, backprops)
        finish = consume if consume is not None else _unchanged
        if self.forced in candidates:
            return finish(self.ROUTES[self.forced](geometry, activations, backprops, multiplicity))
        if backprops.device.type != "cpu" or not self.timed:
            route = self.ROUTES[self.fixed_choice(backprops, multiplicity)]
            return finish(route(geometry, activations, backprops, multiplicity))
        examples = activations.shape[0] // multiplicity
        key = _shape_key(geometry, activations, backprops, multiplicity, consumer)
        times = self.times.setdefault(key, _RouteTimes(candidates, self.fixed_choice(backprops, multiplicity)))
        name = times.next_route(self.trials)
        if times.chosen is not None:
            return finish(self.ROUTES[name](geometry, activations, backprops, multiplicity))
        self._trial_calls += 1
        start = time.perf_counter()
        result = finish(self.ROUTES[name](geometry, activations, backprops, multiplicity))
        times.seconds.setdefault(name, []).append((time.perf_counter() - start) / examples)  # per example
        return result

    def run_strategy(
        self,
        geometry: ConvGeometry,
        activations: torch.Tensor,
        backprops: torch.Tensor,
        multiplicity: int,
        strategies: dict[str, Callable[[], None]],
        preferred: str,
        kind: tuple = (),
    ) -> str:
        """Run one of `strategies` (callables that all write the same result for these tensors) and return its name.

        Chosen like a route, one level up, for the same shape (and `kind`, what else tells layers apart): on
        the CPU each strategy runs `trials` times as the work of those calls, then the fastest (`preferred`,
        the fixed rule's, unless beaten by more than ROUTE_MARGIN). A run during which a route was still
        being timed does not count: a strategy is timed at its routes' best, so the first calls of a shape
        also settle each strategy's routes. Off the CPU, or untimed, `preferred`.
        """
        if self.forced_strategy in strategies:
            name = self.forced_strategy
        elif len(strategies) == 1 or backprops.device.type != "cpu" or not self.timed:
            name = preferred
        else:
            key = _shape_key(geometry, activations, backprops, multiplicity, kind)
            times = self.strategies.setdefault(key, _RouteTimes(tuple(strategies), preferred))
            name = times.next_route(self.trials)
            if times.chosen is None:
                trials_before, start = self._trial_calls, time.perf_counter()
                strategies[name]()
                if self._trial_calls == trials_before:
                    examples = activations.shape[0] // multiplicity
                    times.seconds.setdefault(name, []).append((time.perf_counter() - start) / examples)
                return name
        strategies[name]()
        return name


def _shape_key(
    geometry: ConvGeometry, activations: torch.Tensor, backprops: torch.Tensor, multiplicity: int, kind: tuple
) -> tuple:
    """What a timed choice is kept for: the layer's shapes, K, dtype, threads and `kind`, and the batch size to
    within a power of 2 (batch sizes vary: Poisson sampling, a last micro-batch)."""
    examples = activations.shape[0] // multiplicity
    return (
        geometry,
        tuple(activations.shape[1:]),
        tuple(backprops.shape[1:]),
        examples.bit_length(),
        multiplicity,
        backprops.dtype,
        torch.get_num_threads(),
        kind,
    )


def _unchanged(filter_grads: torch.Tensor) -> torch.Tensor:
    return filter_grads


FILTER_GRADIENT_ROUTES = FilterGradientRoutes()


@contextlib.contextmanager
def untimed_filter_gradient_routes() -> Iterator[None]:
    """Inside, routes are chosen by shape alone (the fixed rule), so a run with fixed seeds repeats bit
    for bit: timed choices differ between runs and processes, and routes differ in float rounding."""
    routes = FILTER_GRADIENT_ROUTES
    timed, routes.timed = routes.timed, False
    try:
        yield
    finally:
        routes.timed = timed


# A steerable layer whose basis has exact grid symmetries (``eqdp_ray.models.kernel_symmetry``: D_N
# and C_N with N | 4, stride 1) can sum each example's filter gradient over them inside the
# contraction, which shrinks the basis transpose o-fold but makes the formation's kernels narrower
# and adds o gathered copies of the input. It pays where the transpose is the larger part: where
# the contracted positions K x H x W are at most this many times the basis size b (measured on the
# benchmark model, 2 threads, 2026-12-01: the 8x8 layer at K=1, 64 positions, b=64: 84 ms against
# 108 ms; 4x4 at K=1, b=32: 15 against 26 ms; 4x4 at K=4: parity; 16x16 at K=1: 146 against 36 ms;
# docs/BENCHMARKS.md). This is the fixed rule (off the CPU, or untimed); on the CPU the strategies are
# timed (``FilterGradientRoutes.run_strategy``): on an AMD Zen 5 the copies won at K=4 on the 4x4 and
# 8x8 layers too (16 against 24 ms, 72 against 88; docs/BENCHMARKS.md, 2026-12-04 evening).
SYMMETRY_ROUTE_POSITIONS = 1.0

# Per-example dense filter gradients of a steerable layer are formed, and mapped to coefficients,
# this many bytes at a time, so that the dense gradients (much larger than the coefficients) never
# exist for the whole batch. With freed memory reused (``eqdp_ray.train.memory.reuse_freed_memory``) a chunk
# costs no page faults, and 32 MiB chunks measured faster than 2 or 8 MiB on the benchmark's
# layers (rules alone, 1 thread: 2.60 s against 2.92 s for 2 MiB, at K=1; docs/BENCHMARKS.md).
# On accelerators large chunks keep the kernels large.
FILTER_GRADIENT_CHUNK_BYTES = {"cpu": 32 * 2**20}
ACCELERATOR_CHUNK_BYTES = 1 * 2**30


def _single_block(layer: SteerableConv2d) -> nn.Module | None:
    """The basis block when one block, tiled over all field pairs, is the whole expansion.

    That is the case for every layer of the equivariant ResNet (one field type in, one out); then the
    transpose of the expansion is one matrix product (``_coefficient_gradients``). None otherwise.
    """
    expansion = layer.expansion
    if getattr(expansion, "_n_pairs", None) != 1 or len(expansion._representations_pairs) != 1:
        return None
    pair = expansion._representations_pairs[0]
    block = getattr(expansion, f"block_expansion_{expansion._escape_pair(pair)}")
    if not expansion._contiguous[pair] or expansion._weights_ranges[pair] != (0, layer.weight.numel()):
        return None
    return block


def _single_block_basis(layer: SteerableConv2d) -> torch.Tensor | None:
    """The sampled basis (b, o, i, S) of ``_single_block``, or None."""
    block = _single_block(layer)
    return None if block is None else block.sampled_basis


def _exact_symmetries(
    layer: SteerableConv2d, x: torch.Tensor, backprops: torch.Tensor
) -> tuple[KernelSymmetry, ...] | None:
    """The layer's basis symmetries where the routes that sum over them apply (stride 1, square maps,
    symmetries that hold bit for bit); None elsewhere."""
    block = _single_block(layer)
    symmetries = getattr(block, "kernel_symmetries", None)
    square = x.shape[2] == x.shape[3] and backprops.shape[2] == backprops.shape[3]
    if symmetries is None or layer.stride != 1 or not square:
        return None
    basis = block.sampled_basis
    # Checked bit for bit once per version of the buffer (a loaded checkpoint writes a new one).
    state = (basis.data_ptr(), basis._version, basis.device, basis.dtype)
    if getattr(block, "_symmetries_checked", (None, None))[0] != state:
        block._symmetries_checked = (state, symmetries_hold(basis, symmetries, layer.kernel_size))
    return symmetries if block._symmetries_checked[1] else None


def _symmetry_copies_pay(basis: torch.Tensor, backprops: torch.Tensor, multiplicity: int) -> bool:
    """The fixed rule (off the CPU, or untimed) between the symmetry copies and the dense transpose."""
    return multiplicity * backprops.shape[2] * backprops.shape[3] <= SYMMETRY_ROUTE_POSITIONS * basis.shape[0]


@functools.lru_cache(maxsize=64)
def _symmetry_gathers(
    symmetries: tuple[KernelSymmetry, ...], fields_in: int, fields_out: int, size_in: int, size_out: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices that lay out each example's input and output gradient once per symmetry (see
    ``_coefficient_gradients_by_symmetry``): copy o of the input is x[(f, inputs_o[i]), map_o(v)], copy o
    of the output gradient is delta[(f, o), map_o(u)]."""
    channels_in = len(symmetries[0].inputs)
    field = torch.arange(fields_in)[:, None] * channels_in
    inputs, outputs = [], []
    for o, symmetry in enumerate(symmetries):
        channels = (field + torch.tensor(symmetry.inputs)[None, :]).reshape(-1)
        points = grid_permutation(symmetry.grid_map, size_in)
        inputs.append((channels[:, None] * size_in**2 + points[None, :]).reshape(-1))
        points = grid_permutation(symmetry.grid_map, size_out)
        channels = torch.arange(fields_out) * len(symmetries) + o
        outputs.append((channels[:, None] * size_out**2 + points[None, :]).reshape(-1))
    return torch.cat(inputs), torch.cat(outputs)


def _coefficient_gradients_by_symmetry(
    geometry: ConvGeometry,
    basis: torch.Tensor,
    symmetries: tuple[KernelSymmetry, ...],
    x: torch.Tensor,
    backprops: torch.Tensor,
    multiplicity: int,
    out: torch.Tensor,
) -> None:
    """Per-example coefficient gradients (summed over K), into `out`, of a layer whose basis has exact grid
    symmetries.

    With basis[:, o, P_o(i), L_o s] == basis[:, 0, i, s], the transpose of the expansion needs only
    S[(f, i), s] = sum_o dW[(f', o), (f, P_o i), L_o s] per output field f', contracted with output channel
    0's slice of the basis: a product with (i*S, b) instead of (o*i*S, b). Substituting t = L_o u in the
    weight gradient, S is the ordinary filter gradient of o copies of the example, copy o being the input
    with channels P_o and grid moved by L_o, and output channel o of each field with the grid moved by
    L_o: the sum over o happens inside the contraction, like the sum over the K augmentations.
    """
    b, copies, channels_in, points = basis.shape
    n = x.shape[0] // multiplicity
    fields_out, fields_in = backprops.shape[1] // copies, x.shape[1] // channels_in
    gather_in, gather_out = _symmetry_gathers(symmetries, fields_in, fields_out, x.shape[2], backprops.shape[2])
    gather_in, gather_out = gather_in.to(x.device), gather_out.to(x.device)
    rows = x.shape[0] * copies
    inputs = x.flatten(1).index_select(1, gather_in).view(rows, x.shape[1], *x.shape[2:])
    outputs = backprops.flatten(1).index_select(1, gather_out).view(rows, fields_out, *backprops.shape[2:])
    kernel_basis = basis[:, 0].unflatten(2, geometry.kernel).to(x.dtype)  # b, i, kh, kw

    def contract(sums: torch.Tensor) -> None:  # sums: n, f_out, f_in * i, kh, kw
        blocks = sums.unflatten(2, (fields_in, channels_in))  # n, f_out, f_in, i, kh, kw
        _contract_with_basis(blocks, kernel_basis, out.view(n * fields_out * fields_in, b))

    consumer = ("symmetry contraction", tuple(basis.shape))
    per_example_filter_gradients(geometry, inputs, outputs, multiplicity * copies, contract, consumer)


def _contract_with_basis(blocks: torch.Tensor, basis: torch.Tensor, out: torch.Tensor) -> None:
    """out (rows, b) = blocks (*rows, *entries) contracted over the entries with basis (b, *entries).

    The entries end in the kernel offsets (kh, kw). `blocks` may have any strides; it is copied once, in
    the order of its memory: where the offsets are outermost (the shifted-products layout), both sides
    put them first.
    """
    entries = basis.dim() - 1
    lead = blocks.dim() - entries
    if blocks.stride(-1) != 1:
        inner = list(range(lead, blocks.dim()))
        blocks = blocks.permute(*range(lead), inner[-2], inner[-1], *inner[:-2])
        basis = basis.permute(0, entries - 1, entries, *range(1, entries - 1))
    torch.mm(blocks.reshape(-1, basis[0].numel()), basis.reshape(basis.shape[0], -1).t(), out=out)


# The orbit sum gathers dense filter gradients this many bytes at a time, so that the sum over the o gathered
# copies reads them from cache (measured on an AMD Zen 5, 2 threads, the equivariant model's 16x16 104 -> 312
# layer: 13.5 ms in 1 or 4 MiB, 15.9 in 256 KiB, 14.2 all at once; docs/BENCHMARKS.md).
ORBIT_CHUNK_BYTES = 4 * 2**20


@functools.lru_cache(maxsize=64)
def _orbit_gather(symmetries: tuple[KernelSymmetry, ...], fields_in: int, kernel_size: int) -> torch.Tensor:
    """Flat indices into one output field's (o, f_in, i, S) block of a dense filter gradient: entry (o, f, i, s)
    of the gathered block is dW[(f', o), (f, P_o i), L_o s], so that its sum over o is
    ``_coefficient_gradients_by_symmetry``'s S."""
    channels_in, points = len(symmetries[0].inputs), kernel_size**2
    entries = channels_in * points
    fields = torch.arange(fields_in)[:, None] * entries
    copies = []
    for o, symmetry in enumerate(symmetries):
        moved = torch.tensor(symmetry.inputs)[:, None] * points + grid_permutation(symmetry.grid_map, kernel_size)
        copies.append((o * fields_in * entries + fields + moved.reshape(1, -1)).reshape(-1))
    return torch.cat(copies)


def _coefficient_gradients_by_orbit_sum(
    layer: SteerableConv2d,
    basis: torch.Tensor,
    symmetries: tuple[KernelSymmetry, ...],
    filter_grads: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """Per-example coefficient gradients from dense filter gradients (m, out, in, kh, kw), into `out`, by
    summing each field pair's block over the basis symmetries first (see ``_coefficient_gradients_by_symmetry``):
    a gather and a sum that read the filter gradients once, then a product with a basis o times smaller."""
    b, copies, channels_in, points = basis.shape
    m = filter_grads.shape[0]
    fields_out, fields_in = filter_grads.shape[1] // copies, filter_grads.shape[2] // channels_in
    rows, width = m * fields_out, copies * fields_in * channels_in * points
    dense = filter_grads.reshape(rows, width)  # a copy for a permuted layout: the route is timed with it
    gather = _orbit_gather(symmetries, fields_in, layer.kernel_size).to(dense.device)
    sums = dense.new_empty(rows, width // copies)
    step = max(1, ORBIT_CHUNK_BYTES // (width * dense.element_size()))
    gathered = dense.new_empty(min(step, rows), width)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        torch.index_select(dense[start:stop], 1, gather, out=gathered[: stop - start])
        torch.sum(gathered[: stop - start].view(stop - start, copies, -1), 1, out=sums[start:stop])
    kernel_basis = basis[:, 0].reshape(b, channels_in * points).to(dense.dtype)
    torch.mm(sums.view(rows * fields_in, -1), kernel_basis.t(), out=out.view(rows * fields_in, b))


def _coefficient_gradients(
    layer: SteerableConv2d, basis: torch.Tensor, filter_grads: torch.Tensor, out: torch.Tensor
) -> None:
    """Per-example coefficient gradients from dense filter gradients (m, out, in, kh, kw), into `out` (m, coeffs).

    escnn's expansion of one block writes filter[(fo, o), (fi, i), s] = sum_b w[fo, fi, b] basis[b, o, i, s],
    so its transpose contracts each example's (o, i, s) entries of every field pair with the basis:
    one matrix product of (m x fields_out x fields_in, o*i*s) by (o*i*s, b), no per-example calls.
    """
    b, o, i, _ = basis.shape
    m = filter_grads.shape[0]
    fields_out, fields_in = filter_grads.shape[1] // o, filter_grads.shape[2] // i
    blocks = filter_grads.unflatten(2, (fields_in, i)).unflatten(1, (fields_out, o)).transpose(2, 3)
    kernel_basis = basis.unflatten(3, filter_grads.shape[3:]).to(filter_grads.dtype)  # b, o, i, kh, kw
    _contract_with_basis(blocks, kernel_basis, out.view(m * fields_out * fields_in, b))


def steerable_conv_rule(
    layer: SteerableConv2d, activations: list[torch.Tensor], backprops: torch.Tensor, multiplicity: int = 1
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-example coefficient gradients (the mean over each example's K inputs).

    One basis block (every layer of the equivariant ResNet) has up to three strategies that compute the same
    numbers, chosen by timing like the filter routes (``FilterGradientRoutes.run_strategy``): "dense" (dense
    per-example filter gradients, then the basis transpose), and where the basis has exact grid symmetries,
    "orbit" (the same filter gradients summed over the symmetries first) and "symmetry" (the sum over the
    symmetries inside the contraction, from o moved copies of the example). Several blocks take the
    expansion's vector-Jacobian product.
    """
    if not layer.weight.requires_grad:
        return {}
    x = activations[0].to(backprops.dtype)
    n = x.shape[0] // multiplicity
    coefficient_grads = torch.empty(n, *layer.weight.shape, dtype=backprops.dtype, device=backprops.device)
    basis = _single_block_basis(layer)
    run = functools.partial(_steerable_strategy, layer, basis, x, backprops, multiplicity, coefficient_grads)
    if basis is None:
        run("expansion")
    else:
        symmetries = _exact_symmetries(layer, x, backprops)
        names = ("dense",) if symmetries is None else ("dense", "orbit", "symmetry")
        strategies = {name: functools.partial(run, name, symmetries) for name in names}
        preferred = (
            "symmetry" if symmetries is not None and _symmetry_copies_pay(basis, backprops, multiplicity) else "dense"
        )
        geometry = ConvGeometry.of_steerable(layer)
        kind = ("steerable", tuple(basis.shape))
        FILTER_GRADIENT_ROUTES.run_strategy(geometry, x, backprops, multiplicity, strategies, preferred, kind)
    if multiplicity > 1:  # the transpose is linear: divide the (fewer) coefficients, not the filters
        coefficient_grads /= multiplicity
    return {layer.weight: coefficient_grads}


def _steerable_strategy(
    layer: SteerableConv2d,
    basis: torch.Tensor | None,
    x: torch.Tensor,
    backprops: torch.Tensor,
    multiplicity: int,
    coefficient_grads: torch.Tensor,
    strategy: str,
    symmetries: tuple[KernelSymmetry, ...] | None = None,
) -> None:
    """One strategy of ``steerable_conv_rule``, a chunk of examples at a time, into `coefficient_grads` (summed
    over K)."""
    n = x.shape[0] // multiplicity
    geometry = ConvGeometry.of_steerable(layer)
    if strategy == "symmetry":  # a chunk holds each example's o copies of its inputs and output gradients
        example_bytes = len(symmetries) * multiplicity * (x[0].numel() + backprops[0].numel())
    else:  # a chunk holds each example's dense filter gradient
        example_bytes = layer.out_type.size * layer.in_type.size * layer.kernel_size**2
    if strategy == "expansion":  # the general expansion: its vector-Jacobian product (linear: the same anywhere)
        _, transpose = vjp(layer.expansion, layer.weight.detach().to(backprops.dtype))
    budget = FILTER_GRADIENT_CHUNK_BYTES.get(backprops.device.type, ACCELERATOR_CHUNK_BYTES)
    chunk = max(1, budget // (example_bytes * backprops.element_size()))
    for start in range(0, n, chunk):
        rows = slice(start * multiplicity, min(n, start + chunk) * multiplicity)
        out = coefficient_grads[start : start + chunk]
        if strategy == "symmetry":
            _coefficient_gradients_by_symmetry(geometry, basis, symmetries, x[rows], backprops[rows], multiplicity, out)
        elif strategy == "expansion":
            filter_grads = per_example_filter_gradients(geometry, x[rows], backprops[rows], multiplicity)
            (out[:],) = vmap(transpose)(filter_grads.flatten(3))
        else:  # each route is timed with the transpose its layout makes cheap or dear
            if strategy == "orbit":
                consume = functools.partial(_coefficient_gradients_by_orbit_sum, layer, basis, symmetries, out=out)
            else:
                consume = functools.partial(_coefficient_gradients, layer, basis, out=out)
            consumer = (f"{strategy} transpose", tuple(basis.shape))
            per_example_filter_gradients(geometry, x[rows], backprops[rows], multiplicity, consume, consumer)


def conv2d_rule(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor, multiplicity: int = 1
) -> dict[nn.Parameter, torch.Tensor]:
    x, geometry = _conv2d_inputs(layer, activations[0].to(backprops.dtype))
    grads: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        contiguous = torch.Tensor.contiguous  # timed with the copy a permuted layout needs
        grads[layer.weight] = per_example_filter_gradients(geometry, x, backprops, multiplicity, contiguous, ("copy",))
        if multiplicity > 1:
            grads[layer.weight] /= multiplicity
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = _per_example_channel_sums(backprops, multiplicity)
    return grads


def _per_example_channel_sums(values: torch.Tensor, multiplicity: int) -> torch.Tensor:
    """Mean over each example's K rows of the sum over each channel's positions."""
    n = values.shape[0] // multiplicity
    sums = values.reshape(n, multiplicity, values.shape[1], -1).sum((1, 3))
    return sums / multiplicity if multiplicity > 1 else sums


def saved_group_norm_statistics(layer: nn.Module, output: torch.Tensor) -> list[torch.Tensor]:
    """The per-example, per-group mean and 1/std that the forward's group norm computed, where autograd kept
    them for its backward (free); [] elsewhere (the rule then recomputes them)."""
    node = output.grad_fn
    if type(node).__name__ != "NativeGroupNormBackward0" or getattr(node, "_saved_group", None) != layer.num_groups:
        return []
    try:
        return [node._saved_result1.detach(), node._saved_result2.detach()]
    except (AttributeError, RuntimeError):  # another torch's names, or the saved tensors already freed
        return []


def _group_statistics(x: torch.Tensor, groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example and group: the mean and 1 / sqrt(variance + eps), by group norm's own kernel (several times
    faster than ``torch.var_mean`` on the CPU)."""
    rows, channels = x.shape[:2]
    _, mean, rstd = torch.native_group_norm(x, None, None, rows, channels, x[0, 0].numel(), groups, eps)
    return mean, rstd


def _row_channel_sums(
    x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, backprops: torch.Tensor, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) each: the sums over each row's and channel's positions of x_hat times the output gradient, and of
    the output gradient.

    Group norm's own backward kernel computes exactly these, then sums them over the rows into the scale's and
    shift's gradients; with the N rows laid side by side as one row of N x C channels in N x G groups, its
    parameter gradients are the per-row sums (one pass over the input and the output gradient, x_hat never
    formed; 1.5-3x faster than a product and two sums, docs/BENCHMARKS.md 2026-12-04 evening).
    """
    rows, channels = x.shape[:2]
    positions = x[0, 0].numel()
    wide = (1, rows * channels, positions)
    _, scale, shift = torch.ops.aten.native_group_norm_backward(
        backprops.reshape(wide),
        x.reshape(wide),
        mean.reshape(1, rows * groups),
        rstd.reshape(1, rows * groups),
        backprops.new_ones(rows * channels),  # the scale itself: its gradient does not depend on it
        1,
        rows * channels,
        positions,
        rows * groups,
        [False, True, True],
    )
    return scale.view(rows, channels), shift.view(rows, channels)


def _group_norm_gradients(
    x: torch.Tensor,
    statistics: list[torch.Tensor],
    backprops: torch.Tensor,
    groups: int,
    eps: float,
    multiplicity: int,
    channels_per_sum: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example gradients of a group norm's scale and shift (each summed over channels_per_sum channels):
    sum_s x_hat g and sum_s g over each example's K rows, with x_hat = (x - mean) * rstd from the forward's
    mean and rstd where the hook found them (``saved_group_norm_statistics``), else recomputed.
    """
    channels = x.shape[1]
    mean, rstd = (s.to(backprops.dtype) for s in statistics) if statistics else _group_statistics(x, groups, eps)
    scale, shift = _row_channel_sums(x, mean, rstd, backprops, groups)
    n = x.shape[0] // multiplicity

    def per_example(values: torch.Tensor) -> torch.Tensor:
        values = values.reshape(n, multiplicity, channels // channels_per_sum, channels_per_sum).sum((1, 3))
        return values / multiplicity if multiplicity > 1 else values

    return per_example(scale), per_example(shift)


def field_group_norm_rule(
    layer: FieldGroupNorm, activations: list[torch.Tensor], backprops: torch.Tensor, multiplicity: int = 1
) -> dict[nn.Parameter, torch.Tensor]:
    x, statistics = activations[0].to(backprops.dtype), activations[1:]
    scale, shift = _group_norm_gradients(
        x, statistics, backprops, layer.num_groups, layer.eps, multiplicity, layer.field_size
    )
    return {p: g for p, g in ((layer.weight, scale), (layer.bias, shift)) if p.requires_grad}


def group_norm_rule(
    layer: nn.GroupNorm, activations: list[torch.Tensor], backprops: torch.Tensor, multiplicity: int = 1
) -> dict[nn.Parameter, torch.Tensor]:
    if not layer.affine:
        return {}
    x, statistics = activations[0].to(backprops.dtype), activations[1:]
    scale, shift = _group_norm_gradients(x, statistics, backprops, layer.num_groups, layer.eps, multiplicity)
    return {p: g for p, g in ((layer.weight, scale), (layer.bias, shift)) if p.requires_grad}


# What a layer's rule takes beside its input, read off its output in the forward hook.
FORWARD_STATISTICS = {FieldGroupNorm: saved_group_norm_statistics, nn.GroupNorm: saved_group_norm_statistics}


def linear_rule(
    layer: nn.Linear, activations: list[torch.Tensor], backprops: torch.Tensor, multiplicity: int = 1
) -> dict[nn.Parameter, torch.Tensor]:
    inputs, outputs = linear_rows(activations[0].to(backprops.dtype), backprops, multiplicity)
    grads: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        grads[layer.weight] = torch.bmm(outputs.transpose(1, 2), inputs)
        if multiplicity > 1:
            grads[layer.weight] /= multiplicity
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = linear_bias_gradients(outputs, multiplicity)
    return grads


def linear_rows(x: torch.Tensor, backprops: torch.Tensor, multiplicity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A Linear layer's inputs (n, T, d) and output gradients (n, T, p): each example's K rows (and any
    inner dimensions) together, T of them."""
    n = x.shape[0] // multiplicity
    return x.reshape(n, -1, x.shape[-1]), backprops.reshape(n, -1, backprops.shape[-1])


def linear_bias_gradients(outputs: torch.Tensor, multiplicity: int) -> torch.Tensor:
    """Per-example bias gradients from output gradients laid out by `linear_rows`: the mean over K."""
    return outputs.sum(1) / multiplicity if multiplicity > 1 else outputs.sum(1)


AUGMENTATION_AWARE_RULES = {
    SteerableConv2d: steerable_conv_rule,
    FieldGroupNorm: field_group_norm_rule,
    nn.Conv2d: conv2d_rule,
    nn.GroupNorm: group_norm_rule,
    nn.Linear: linear_rule,
}


@register_grad_sampler(SteerableConv2d)
def steerable_conv_grad_sample(
    layer: SteerableConv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    return steerable_conv_rule(layer, activations, backprops)


@register_grad_sampler(FieldGroupNorm)
def field_group_norm_grad_sample(
    layer: FieldGroupNorm, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    return field_group_norm_rule(layer, activations, backprops)
