"""Average over augmentations, clip each example to norm C, sum: the bounded-sensitivity part of DP-SGD."""

from __future__ import annotations

import torch

from eqdp_ray.privacy._faults import _fault


class DeferredGradient:
    """One parameter's per-example gradients, not formed: their squared norms, and their weighted sum on demand.

    Some layers can give both more cheaply than the n per-example gradients themselves
    (``ghost_norms``); clipping needs nothing else. Always per *example* (averaged over its K inputs).
    """

    squared_norms: torch.Tensor  # (n,)

    def weighted_sum(self, weights: torch.Tensor) -> torch.Tensor:
        """sum_i weights[i] * g_i, shaped like the parameter."""
        raise NotImplementedError


PerExampleGradient = torch.Tensor | DeferredGradient


def average_augmentations(per_example: list[PerExampleGradient], multiplicity: int) -> list[PerExampleGradient]:
    """Mean over each example's K augmentations (rows are example-major: e0k0, e0k1, ..., e1k0, ...).

    Averaging *before* clipping is what keeps the sensitivity at C: the K augmented copies are
    one example, so together they contribute one clipped gradient (De et al. 2022).
    """
    if multiplicity == 1:
        return per_example
    if any(isinstance(g, DeferredGradient) for g in per_example):
        raise ValueError("deferred gradients are per example already; pass multiplicity=1")
    return [g.reshape(-1, multiplicity, *g.shape[1:]).mean(dim=1) for g in per_example]


def _squared_norms(g: PerExampleGradient) -> torch.Tensor:
    if isinstance(g, DeferredGradient):
        return g.squared_norms
    return torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1).square()  # no squared copy of g


def per_example_norms(per_example: list[PerExampleGradient]) -> torch.Tensor:
    """The L2 norm of each example's gradient over all parameters together."""
    return torch.stack([_squared_norms(g) for g in per_example], dim=1).sum(dim=1).sqrt()


# On the CPU the clipped sum is formed this many columns at a time, as one batched product of the weights
# with each block of the n rows: a single (1 x n) @ (n x P) product streams the n per-example gradients at
# about half the memory bandwidth a reduction reaches (WRN-16-4's 2.75M parameters x 64 examples: 27.7 ->
# 14.6 ms; ResNet-9 GN 24.6 -> 17.3; AMD Zen 5, 2 threads, 2026-12-06, docs/BENCHMARKS.md).
WEIGHTED_SUM_BLOCK = 16384


def weighted_row_sum(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i weights[i] * rows[i] of an (n, P) matrix, as the product weights @ rows."""
    weights = weights.to(rows.dtype)
    n, size = rows.shape
    blocks = size // WEIGHTED_SUM_BLOCK
    if rows.device.type != "cpu" or blocks < 2 or rows.stride(1) != 1:
        return weights @ rows
    whole = blocks * WEIGHTED_SUM_BLOCK
    out = rows.new_empty(size)
    columns = rows[:, :whole].view(n, blocks, WEIGHTED_SUM_BLOCK).transpose(0, 1)
    torch.bmm(weights.expand(blocks, 1, n), columns, out=out[:whole].view(blocks, 1, WEIGHTED_SUM_BLOCK))
    if whole < size:
        torch.mv(rows[:, whole:].t(), weights, out=out[whole:])
    return out


def _weighted_sum(g: PerExampleGradient, weights: torch.Tensor) -> torch.Tensor:
    if isinstance(g, DeferredGradient):
        return g.weighted_sum(weights)
    return weighted_row_sum(g.reshape(g.shape[0], -1), weights).view(g.shape[1:])


def clip_factors(norms: torch.Tensor, max_norm: float) -> torch.Tensor:
    """min(1, C / ||g||): multiplying each example by its factor bounds its norm by C.

    The norm is enlarged by a margin of rounding (64 eps relative, 7.6e-6 in float32, plus 1e-6)
    so that rounding in the norm, in recomputing it after scaling, or between a ghost norm and the
    product that adds the example (``ghost_norms``: ~5e-7 measured), cannot carry a clipped
    gradient above C.
    """
    if _fault("no_clipping") is not None:
        return torch.ones_like(norms)
    margin = 1 + 64 * torch.finfo(norms.dtype).eps
    return (max_norm / (norms * margin + 1e-6)).clamp(max=1.0)


def clip_and_sum(
    per_example: list[PerExampleGradient], max_norm: float, multiplicity: int = 1
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Sum over examples of the clipped, augmentation-averaged gradients; also the unclipped norms."""
    averaged = average_augmentations(per_example, multiplicity)
    norms = per_example_norms(averaged)
    factors = clip_factors(norms, max_norm)
    summed = [_weighted_sum(g, factors) for g in averaged]
    return summed, norms
