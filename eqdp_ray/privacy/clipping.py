"""Average over augmentations, clip each example to norm C, sum: the bounded-sensitivity part of DP-SGD."""

from __future__ import annotations

import torch

from eqdp_ray.privacy._faults import _fault


def average_augmentations(per_example: list[torch.Tensor], multiplicity: int) -> list[torch.Tensor]:
    """Mean over each example's K augmentations (rows are example-major: e0k0, e0k1, ..., e1k0, ...).

    Averaging *before* clipping is what keeps the sensitivity at C: the K augmented copies are
    one example, so together they contribute one clipped gradient (De et al. 2022).
    """
    if multiplicity == 1:
        return per_example
    return [g.reshape(-1, multiplicity, *g.shape[1:]).mean(dim=1) for g in per_example]


def per_example_norms(per_example: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of each example's gradient over all parameters together."""
    squares = [g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in per_example]
    return torch.stack(squares, dim=1).sum(dim=1).sqrt()


def clip_factors(norms: torch.Tensor, max_norm: float) -> torch.Tensor:
    """min(1, C / ||g||): multiplying each example by its factor bounds its norm by C."""
    if _fault("no_clipping") is not None:
        return torch.ones_like(norms)
    return (max_norm / (norms + 1e-6)).clamp(max=1.0)


def clip_and_sum(
    per_example: list[torch.Tensor], max_norm: float, multiplicity: int = 1
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Sum over examples of the clipped, augmentation-averaged gradients; also the unclipped norms."""
    averaged = average_augmentations(per_example, multiplicity)
    norms = per_example_norms(averaged)
    factors = clip_factors(norms, max_norm).to(averaged[0].dtype)
    summed = [torch.einsum("n,n...->...", factors, g) for g in averaged]
    return summed, norms
