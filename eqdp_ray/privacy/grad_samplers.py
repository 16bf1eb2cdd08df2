"""Per-example gradient rules for the layers Opacus does not know.

Opacus ships rules for ``nn.Conv2d``, ``nn.Linear`` and ``nn.GroupNorm``; the two rules here
are written by hand because those layers are ours:

* ``SteerableConv2d``: per-example *filter* gradients come from the usual unfold-and-contract
  rule, then are mapped back to basis coefficients through the transpose of escnn's (linear)
  basis expansion, batched with ``torch.func.vmap``.
* ``FieldGroupNorm``: scale and shift are shared across the channels of a field, so their
  per-example gradients are sums over each field's channels and positions.

Importing this module registers both rules in Opacus's registry.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler
from torch import nn
from torch.func import vjp, vmap

from eqdp_ray.models.layers import FieldGroupNorm, SteerableConv2d


def per_example_filter_gradients(layer: SteerableConv2d, activations: torch.Tensor, backprops: torch.Tensor) -> torch.Tensor:
    """Gradient of each example's loss w.r.t. the dense filter, shape (N, out, in, k*k)."""
    n = activations.shape[0]
    k = layer.kernel_size
    patches = F.unfold(activations, k, padding=layer.padding, stride=layer.stride)  # N, in*k*k, L
    grads = backprops.reshape(n, backprops.shape[1], -1)  # N, out, L
    filters = torch.bmm(grads, patches.transpose(1, 2))  # N, out, in*k*k
    return filters.reshape(n, layer.out_type.size, layer.in_type.size, k * k)


@register_grad_sampler(SteerableConv2d)
def steerable_conv_grad_sample(
    layer: SteerableConv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    if not layer.weight.requires_grad:
        return {}
    activations_ = activations[0].to(backprops.dtype)
    filter_grads = per_example_filter_gradients(layer, activations_, backprops)
    # The expansion is linear, so its vector-Jacobian product is the same at every point.
    _, transpose = vjp(layer.expansion, layer.weight.detach())
    (coefficient_grads,) = vmap(transpose)(filter_grads)
    return {layer.weight: coefficient_grads}


@register_grad_sampler(FieldGroupNorm)
def field_group_norm_grad_sample(
    layer: FieldGroupNorm, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    x = activations[0].to(backprops.dtype)
    n, c, h, w = x.shape
    shape = (n, layer.num_fields, layer.field_size * h * w)
    grads: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        grads[layer.weight] = (layer.normalized(x) * backprops).reshape(shape).sum(-1)
    if layer.bias.requires_grad:
        grads[layer.bias] = backprops.reshape(shape).sum(-1)
    return grads
