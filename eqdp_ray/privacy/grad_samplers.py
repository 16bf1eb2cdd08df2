"""Per-example gradient rules for the layers Opacus does not know.

Opacus ships rules for ``nn.Conv2d``, ``nn.Linear`` and ``nn.GroupNorm``; the two rules here
are written by hand because those layers are ours:

* ``SteerableConv2d``: per-example *filter* gradients come from the usual unfold-and-contract
  rule, then are mapped back to basis coefficients through the transpose of escnn's (linear)
  basis expansion, batched with ``torch.func.vmap``.
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


def per_example_filter_gradients(
    layer: SteerableConv2d, activations: torch.Tensor, backprops: torch.Tensor, multiplicity: int = 1
) -> torch.Tensor:
    """Mean over each example's K inputs of the gradient w.r.t. the dense filter: (N/K, out, in, k*k)."""
    k = layer.kernel_size
    n = activations.shape[0] // multiplicity
    patches = F.unfold(activations, k, padding=layer.padding, stride=layer.stride)  # NK, in*k*k, L
    grads = backprops.reshape(backprops.shape[0], backprops.shape[1], -1)  # NK, out, L
    if multiplicity > 1:  # fold the K inputs of an example into its positions: one contraction
        patches = patches.reshape(n, multiplicity, *patches.shape[1:]).transpose(1, 2).flatten(2)
        grads = grads.reshape(n, multiplicity, *grads.shape[1:]).transpose(1, 2).flatten(2)
    filters = torch.bmm(grads, patches.transpose(1, 2))  # N, out, in*k*k
    if multiplicity > 1:
        filters = filters / multiplicity
    return filters.reshape(n, layer.out_type.size, layer.in_type.size, k * k)


def steerable_conv_rule(
    layer: SteerableConv2d, activations: list[torch.Tensor], backprops: torch.Tensor, multiplicity: int = 1
) -> dict[nn.Parameter, torch.Tensor]:
    if not layer.weight.requires_grad:
        return {}
    filter_grads = per_example_filter_gradients(layer, activations[0].to(backprops.dtype), backprops, multiplicity)
    # The expansion is linear, so its vector-Jacobian product is the same at every point.
    _, transpose = vjp(layer.expansion, layer.weight.detach().to(backprops.dtype))
    (coefficient_grads,) = vmap(transpose)(filter_grads)
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
