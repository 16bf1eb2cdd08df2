"""Per-example gradient rules for the layers Opacus does not know.

Opacus ships rules for ``nn.Conv2d``, ``nn.Linear`` and ``nn.GroupNorm``; the two rules here
are written by hand because those layers are ours:

* ``SteerableConv2d``: per-example *filter* gradients come from one grouped weight-gradient
  convolution (large feature maps) or the unfold-and-contract rule (small ones), then are mapped
  back to basis coefficients through the transpose of escnn's (linear) basis expansion, batched
  with ``torch.func.vmap``.
* ``FieldGroupNorm``: scale and shift are shared across the channels of a field, so their
  per-example gradients are sums over each field's channels and positions.

Both rules take the augmentation multiplicity K and return the per-*example* gradient (the mean
over each example's K augmented inputs) directly: the contraction over K happens before the
large per-example tensors are formed, which is what keeps a K=4 step cheap. Importing this
module also registers both rules (with K=1) in Opacus's registry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler
from torch import nn
from torch.func import vjp, vmap

from eqdp_ray.models.layers import FieldGroupNorm, SteerableConv2d

# Below this many contracted positions per example (K x output height x width) the unfold route
# is faster on CPU; above it the grouped weight-gradient convolution wins (benchmarks/dp_step.py,
# docs/BENCHMARKS.md). Both compute the same sum, so the choice only moves time.
GROUPED_CONV_MIN_POSITIONS = 256


def per_example_filter_gradients(
    layer: SteerableConv2d, activations: torch.Tensor, backprops: torch.Tensor, multiplicity: int = 1
) -> torch.Tensor:
    """Mean over each example's K inputs of the gradient w.r.t. the dense filter: (N/K, out, in, k*k)."""
    positions = multiplicity * backprops.shape[2] * backprops.shape[3]
    if positions >= GROUPED_CONV_MIN_POSITIONS:
        filters = _filter_gradients_by_grouped_conv(layer, activations, backprops, multiplicity)
    else:
        filters = _filter_gradients_by_unfold(layer, activations, backprops, multiplicity)
    if multiplicity > 1:
        filters = filters / multiplicity
    n = activations.shape[0] // multiplicity
    return filters.reshape(n, layer.out_type.size, layer.in_type.size, layer.kernel_size**2)


def _filter_gradients_by_unfold(
    layer: SteerableConv2d, activations: torch.Tensor, backprops: torch.Tensor, multiplicity: int
) -> torch.Tensor:
    """Sum over K: unfold the input into patches, one batched matmul per example."""
    k = layer.kernel_size
    n = activations.shape[0] // multiplicity
    patches = F.unfold(activations, k, padding=layer.padding, stride=layer.stride)  # NK, in*k*k, L
    grads = backprops.reshape(backprops.shape[0], backprops.shape[1], -1)  # NK, out, L
    if multiplicity > 1:  # fold the K inputs of an example into its positions: one contraction
        patches = patches.reshape(n, multiplicity, *patches.shape[1:]).transpose(1, 2).flatten(2)
        grads = grads.reshape(n, multiplicity, *grads.shape[1:]).transpose(1, 2).flatten(2)
    return torch.bmm(grads, patches.transpose(1, 2))  # N, out, in*k*k


def _filter_gradients_by_grouped_conv(
    layer: SteerableConv2d, activations: torch.Tensor, backprops: torch.Tensor, multiplicity: int
) -> torch.Tensor:
    """Sum over K: one weight-gradient convolution with the N examples as groups.

    Laid out as a batch of K images with N x channels each, a grouped convolution's weight
    gradient (which sums over the batch and the positions) is exactly each example's filter
    gradient summed over its K inputs; no patch tensor (in*k*k times larger than the input) is
    ever formed.
    """
    n = activations.shape[0] // multiplicity
    channels_in, channels_out = activations.shape[1], backprops.shape[1]
    inputs = activations.reshape(n, multiplicity, channels_in, *activations.shape[2:]).transpose(0, 1)
    outputs = backprops.reshape(n, multiplicity, channels_out, *backprops.shape[2:]).transpose(0, 1)
    inputs = inputs.reshape(multiplicity, n * channels_in, *activations.shape[2:])
    outputs = outputs.reshape(multiplicity, n * channels_out, *backprops.shape[2:])
    k = layer.kernel_size
    weight_shape = torch.empty(n * channels_out, channels_in, k, k, dtype=backprops.dtype, device=backprops.device)
    _, filters, _ = torch.ops.aten.convolution_backward(
        outputs,
        inputs,
        weight_shape,
        None,
        [layer.stride] * 2,
        [layer.padding] * 2,
        [1, 1],
        False,
        [0, 0],
        n,
        [False, True, False],
    )
    return filters


# Per-example dense filter gradients are formed, and mapped to coefficients, this many bytes at
# a time. On CPU small chunks are still in cache when the transpose reads them, and are recycled
# from the heap instead of being mmapped, page-faulted and zeroed afresh every step. Measured on
# the dp_step benchmark's layers (2 cores): 2 MiB chunks made the rules 1.3x faster than 16 MiB
# chunks at K=4 and ~1.6x faster than no chunking (docs/BENCHMARKS.md). On accelerators large
# chunks keep the kernels large.
FILTER_GRADIENT_CHUNK_BYTES = {"cpu": 2 * 2**20}
ACCELERATOR_CHUNK_BYTES = 1 * 2**30


def steerable_conv_rule(
    layer: SteerableConv2d, activations: list[torch.Tensor], backprops: torch.Tensor, multiplicity: int = 1
) -> dict[nn.Parameter, torch.Tensor]:
    if not layer.weight.requires_grad:
        return {}
    x = activations[0].to(backprops.dtype)
    n = x.shape[0] // multiplicity
    # The expansion is linear, so its vector-Jacobian product is the same at every point.
    _, transpose = vjp(layer.expansion, layer.weight.detach().to(backprops.dtype))
    filter_bytes = layer.out_type.size * layer.in_type.size * layer.kernel_size**2 * backprops.element_size()
    budget = FILTER_GRADIENT_CHUNK_BYTES.get(backprops.device.type, ACCELERATOR_CHUNK_BYTES)
    chunk = max(1, budget // filter_bytes)
    coefficient_grads = torch.empty(n, *layer.weight.shape, dtype=backprops.dtype, device=backprops.device)
    for start in range(0, n, chunk):
        rows = slice(start * multiplicity, min(n, start + chunk) * multiplicity)
        filter_grads = per_example_filter_gradients(layer, x[rows], backprops[rows], multiplicity)
        (coefficient_grads[start : start + chunk],) = vmap(transpose)(filter_grads)
    return {layer.weight: coefficient_grads}


def field_group_norm_rule(
    layer: FieldGroupNorm, activations: list[torch.Tensor], backprops: torch.Tensor, multiplicity: int = 1
) -> dict[nn.Parameter, torch.Tensor]:
    x = activations[0].to(backprops.dtype)
    n, c, h, w = x.shape
    # rows of one example's K inputs summed together, then divided by K
    shape = (n // multiplicity, multiplicity, layer.num_fields, layer.field_size * h * w)
    grads: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        grads[layer.weight] = (layer.normalized(x) * backprops).reshape(shape).sum((1, 3)) / multiplicity
    if layer.bias.requires_grad:
        grads[layer.bias] = backprops.reshape(shape).sum((1, 3)) / multiplicity
    return grads


AUGMENTATION_AWARE_RULES = {SteerableConv2d: steerable_conv_rule, FieldGroupNorm: field_group_norm_rule}


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
