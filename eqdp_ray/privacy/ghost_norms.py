"""Per-example gradient norms without the per-example gradients, for layers where that is cheaper.

A conventional layer's per-example weight gradient is a sum of outer products, one per contracted
position t of the example (its K augmented inputs times the output's positions):
``G_i = sum_t g_t a_t^T``. Its squared norm needs no ``G_i``:
``||G_i||^2 = sum_{t,t'} (g_t . g_t') (a_t . a_t')``, the sum of the elementwise product of two
small Gram matrices (Goodfellow 2015; Li et al. 2022; Bu et al. 2023 "mixed ghost clipping").
Once every example's clip factor c_i is known, the clipped sum ``sum_i c_i G_i`` is one ordinary
weight gradient of the layer with each example's output gradient scaled by c_i: the same
contraction the non-private step runs ("book-keeping", Bu et al. 2023).

That replaces forming, storing and reading n per-example gradients (n x d x p numbers) by two Gram
matrices (n x T^2 each) and one summed weight gradient; it pays where T is small against d and p,
which is where most parameters of ResNet-9 and WRN-16-4 sit (3x3 convolutions of 256 channels on
8x8 and 4x4 maps, the classifier). Elsewhere the per-example gradient is formed as before
(``grad_samplers``). Both give the same numbers (tests check them against a loop in float64).

The patches' Gram matrix ``a_t . a_t'`` is a sum over the kernel's offsets of windows of the Gram
matrix of the input's (padded) positions (``patch_grams``): at stride 1 that costs about a kernel
area fewer multiplications than unfolding the patches, and the patch tensor is never formed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eqdp_ray.privacy import grad_samplers
from eqdp_ray.privacy.clipping import DeferredGradient
from eqdp_ray.privacy.grad_samplers import (
    ConvGeometry,
    _conv2d_inputs,
    _per_example_channel_sums,
    linear_bias_gradients,
    linear_rows,
    summed_weight_gradient,
    unfolded_patches,
)

# Ghost norms are used where T (d + p) <= GHOST_COST_RATIO x d p: the Gram matrices (cost n T^2 (d+p))
# then cost at most this fraction of forming the per-example gradients (n T d p). Below 1 because the
# per-example route's products are large and efficient, the Gram route's are small (T x T) ones;
# measured on the benchmark models (benchmarks/dp_step.py, docs/BENCHMARKS.md).
GHOST_COST_RATIO = 0.5


def ghost_norms_are_consistent(device: torch.device) -> bool:
    """Whether the Gram-matrix norm and the weighted weight gradient agree to float32 rounding on `device`.

    The two are computed by different products, so an example's clip factor comes from one and its
    contribution from the other. In float32 they agree to ~5e-7 relative (measured on ResNet-9),
    which the clip margin covers; with TF32 (CUDA's default for convolutions) they would differ by
    ~1e-3, letting a clipped contribution exceed C. There the per-example gradients are formed, so
    that norm and sum come from the same numbers.
    """
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return not (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
    return False


def ghost_norms_pay(contracted: int, inputs_per_output: int, outputs: int) -> bool:
    """Whether T contracted positions make the Gram route cheaper than forming the gradients (d x p each)."""
    return contracted * (inputs_per_output + outputs) <= GHOST_COST_RATIO * inputs_per_output * outputs


def _gram(rows: torch.Tensor) -> torch.Tensor:
    """(B, T, d) -> (B, T, T): the dot products of each entry's T rows (a transposed view is read as it lies)."""
    return torch.bmm(rows, rows.transpose(1, 2))


def _squared_norms_of_grams(gram_inputs: torch.Tensor, gram_grads: torch.Tensor, k: int) -> torch.Tensor:
    """sum_{t,t'} (a_t . a_t')(g_t . g_t') / K^2 for each batch entry, from the two (B, T, T) Gram matrices.

    The 1/K^2 makes it the squared norm of the mean over an example's K inputs, not of their sum.
    """
    return (gram_inputs * gram_grads).sum((1, 2)) / (k * k)


def conv2d_ghost_norms_pay(layer: nn.Conv2d, backprops: torch.Tensor, multiplicity: int) -> bool:
    """``ghost_norms_pay`` for a convolution: its K x output positions, fan-in and fan-out (per group)."""
    contracted = multiplicity * backprops.shape[2] * backprops.shape[3]
    return ghost_norms_pay(contracted, layer.weight[0].numel(), backprops.shape[1] // layer.groups)


def _squared_norms_from_grams(patches: torch.Tensor, grads: torch.Tensor, k: int) -> torch.Tensor:
    """``_squared_norms_of_grams`` of patches (B, T, d) and grads (B, T, p) -> (B,); a single row needs no Gram.

    Either argument may be a transposed view (B, d, T).transpose(1, 2): the products read it as it lies.
    """
    if patches.shape[1] == 1:
        squared = (
            torch.linalg.vector_norm(patches, dim=(1, 2)).square()
            * torch.linalg.vector_norm(grads, dim=(1, 2)).square()
        )
        return squared / (k * k)
    return _squared_norms_of_grams(_gram(patches), _gram(grads), k)


def _padded_positions(x: torch.Tensor, geometry: ConvGeometry) -> int:
    return (x.shape[2] + 2 * geometry.padding[0]) * (x.shape[3] + 2 * geometry.padding[1])


def _grams_by_shifts_pay(x: torch.Tensor, geometry: ConvGeometry, output_size: tuple[int, int]) -> bool:
    """Whether the padded input's position Gram (padded positions^2 x channels, then kernel area windows
    of positions^2 added) costs less than the patches' (positions^2 x channels x kernel area): at stride 1,
    not at stride 2 (four times the positions) nor for a 1x1 kernel (no patches to save)."""
    kernel_area = geometry.kernel[0] * geometry.kernel[1]
    positions, channels = output_size[0] * output_size[1], x.shape[1] // geometry.groups
    shifts = _padded_positions(x, geometry) ** 2 * channels + kernel_area * positions**2
    return shifts < positions**2 * channels * kernel_area


def patch_gram_bytes(x: torch.Tensor, geometry: ConvGeometry, output_size: tuple[int, int], k: int) -> int:
    """Bytes that ``patch_grams`` forms for one example (its input Gram, or its unfolded patches)."""
    if _grams_by_shifts_pay(x, geometry, output_size):
        return (geometry.groups * (k * _padded_positions(x, geometry)) ** 2 + k * x[0].numel()) * x.element_size()
    kernel_area = geometry.kernel[0] * geometry.kernel[1]
    return k * x.shape[1] * kernel_area * output_size[0] * output_size[1] * x.element_size()


def patch_grams(x: torch.Tensor, geometry: ConvGeometry, output_size: tuple[int, int], k: int) -> torch.Tensor:
    """Gram matrices of each example's patches (a_t . a_t'), (m groups, K T, K T), the K inputs side by side."""
    if _grams_by_shifts_pay(x, geometry, output_size):
        return _patch_grams_by_shifts(x, geometry, output_size, k)
    patches = unfolded_patches(x, geometry, k)  # (m g, d, K T)
    return _gram(patches.transpose(1, 2))


def _patch_grams_by_shifts(
    x: torch.Tensor, geometry: ConvGeometry, output_size: tuple[int, int], k: int
) -> torch.Tensor:
    """``patch_grams`` without unfolding the patches.

    Patch t holds the input at positions s t + d u over the kernel offsets u (stride s, dilation d,
    in padded coordinates), so a_t . a_t' = sum_u x_{s t + d u} . x_{s t' + d u}: the sum over u of
    a strided window of the Gram matrix of the padded input's positions. No kernel-area-times larger
    patch tensor is formed.
    """
    (kh, kw), (sh, sw), (dh, dw), g = geometry.kernel, geometry.stride, geometry.dilation, geometry.groups
    ph, pw = geometry.padding
    padded = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    m, channels, height, width = x.shape[0] // k, x.shape[1] // g, padded.shape[2], padded.shape[3]
    columns = padded.reshape(m, k, g, channels, height * width)
    if k > 1:  # an example's K inputs side by side
        columns = columns.transpose(1, 2).transpose(2, 3)
    columns = columns.reshape(m * g, channels, k * height * width)
    gram = _gram(columns.transpose(1, 2)).view(m * g, k, height, width, k, height, width)
    rows_out, cols_out = output_size
    grams = None
    for u in range(kh):
        rows = slice(u * dh, u * dh + sh * (rows_out - 1) + 1, sh)
        for v in range(kw):
            cols = slice(v * dw, v * dw + sw * (cols_out - 1) + 1, sw)
            window = gram[:, :, rows, cols, :, rows, cols]
            grams = window.clone(memory_format=torch.contiguous_format) if grams is None else grams.add_(window)
    return grams.view(m * g, k * rows_out * cols_out, k * rows_out * cols_out)


class _ConvWeightGradient(DeferredGradient):
    """A Conv2d weight's per-example gradients as (inputs, output gradients); the clipped sum is one weight gradient."""

    def __init__(self, layer: nn.Conv2d, x: torch.Tensor, geometry: ConvGeometry, backprops: torch.Tensor, k: int):
        self.layer, self.x, self.geometry, self.backprops, self.k = layer, x, geometry, backprops, k
        self.squared_norms = self._squared_norms()

    def _squared_norms(self) -> torch.Tensor:
        geometry, k, x, backprops = self.geometry, self.k, self.x, self.backprops
        n, g = x.shape[0] // k, geometry.groups
        output_size = backprops.shape[2:]
        positions = output_size[0] * output_size[1]
        channels_out = backprops.shape[1]
        example_bytes = patch_gram_bytes(x, geometry, output_size, k)
        # grad_samplers.PATCH_CHUNK_BYTES read here, at call time, so that one setting (and a test) governs both
        chunk = max(1, grad_samplers.PATCH_CHUNK_BYTES // example_bytes) if x.device.type == "cpu" else n
        norms = torch.empty(n, dtype=backprops.dtype, device=backprops.device)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            rows, m = slice(start * k, stop * k), stop - start
            gram_inputs = patch_grams(x[rows], geometry, output_size, k)
            grads = backprops[rows].reshape(m, k, g, channels_out // g, positions)
            if k == 1:  # (m g, p, T) as it lies, read transposed
                grads = grads.view(m * g, -1, positions).transpose(1, 2)
            else:  # an example's K inputs side by side: (m g, K T, p)
                grads = grads.permute(0, 2, 1, 4, 3).reshape(m * g, k * positions, -1)
            norms[start:stop] = _squared_norms_of_grams(gram_inputs, _gram(grads), k).view(m, g).sum(1)
        return norms

    def weighted_sum(self, weights: torch.Tensor) -> torch.Tensor:
        geometry, k = self.geometry, self.k
        scale = (weights / k).repeat_interleave(k).to(self.backprops.dtype)  # the mean over K
        scaled = self.backprops * scale.view(-1, 1, 1, 1)
        weight = self.layer.weight.to(self.backprops.dtype)
        return summed_weight_gradient(geometry, self.x, scaled, weight, groups=geometry.groups)


class _LinearWeightGradient(DeferredGradient):
    """A Linear weight's per-example gradients as (inputs, output gradients), each example's rows together."""

    def __init__(self, inputs: torch.Tensor, outputs: torch.Tensor, k: int):
        self.inputs, self.outputs, self.k = inputs, outputs, k  # (n, T, d), (n, T, p)
        self.squared_norms = _squared_norms_from_grams(inputs, outputs, k)

    def weighted_sum(self, weights: torch.Tensor) -> torch.Tensor:
        scale = (weights / self.k).to(self.outputs.dtype)  # the mean over K
        scaled = self.outputs * scale.view(-1, 1, 1)
        return scaled.reshape(-1, scaled.shape[-1]).t() @ self.inputs.reshape(-1, self.inputs.shape[-1])


def conv2d_deferred_rule(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor, multiplicity: int = 1
) -> dict[nn.Parameter, torch.Tensor | DeferredGradient] | None:
    """The weight as a DeferredGradient (and the bias formed) where ghost norms pay; None where they do not."""
    if not layer.weight.requires_grad or not ghost_norms_are_consistent(backprops.device):
        return None
    if not conv2d_ghost_norms_pay(layer, backprops, multiplicity):
        return None
    x, geometry = _conv2d_inputs(layer, activations[0].to(backprops.dtype))
    grads: dict[nn.Parameter, torch.Tensor | DeferredGradient] = {
        layer.weight: _ConvWeightGradient(layer, x, geometry, backprops, multiplicity)
    }
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = _per_example_channel_sums(backprops, multiplicity)
    return grads


def linear_deferred_rule(
    layer: nn.Linear, activations: list[torch.Tensor], backprops: torch.Tensor, multiplicity: int = 1
) -> dict[nn.Parameter, torch.Tensor | DeferredGradient] | None:
    """The weight as a DeferredGradient (and the bias formed) where ghost norms pay; None where they do not."""
    if not layer.weight.requires_grad or not ghost_norms_are_consistent(backprops.device):
        return None
    inputs, outputs = linear_rows(activations[0].to(backprops.dtype), backprops, multiplicity)
    if not ghost_norms_pay(inputs.shape[1], inputs.shape[2], outputs.shape[2]):
        return None
    grads: dict[nn.Parameter, torch.Tensor | DeferredGradient] = {
        layer.weight: _LinearWeightGradient(inputs, outputs, multiplicity)
    }
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = linear_bias_gradients(outputs, multiplicity)
    return grads


DEFERRED_RULES = {nn.Conv2d: conv2d_deferred_rule, nn.Linear: linear_deferred_rule}
