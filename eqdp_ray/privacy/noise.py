"""The Gaussian mechanism: ONE draw N(0, sigma^2 C^2) per step, added to the summed clipped gradient.

In a distributed run every rank holds a generator seeded identically (from a secure seed that
is never written anywhere), so each rank computes the very same draw after the all-reduce:
one draw, shared, never one per worker. The generator lives on the CPU so the draw does not
depend on the accelerator.
"""

from __future__ import annotations

import secrets

import torch


def secure_seed() -> int:
    """A seed from the operating system's CSPRNG, for the noise and the sampler of a real run."""
    return secrets.randbits(63)


def noise_generator(seed: int) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def add_gaussian_noise(
    summed: list[torch.Tensor], noise_multiplier: float, max_norm: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """Return summed + z with z ~ N(0, (noise_multiplier * max_norm)^2 I) over all parameters at once."""
    std = noise_multiplier * max_norm
    noisy = []
    for tensor in summed:
        draw = torch.normal(0.0, std, size=tensor.shape, generator=generator, dtype=torch.float64)
        noisy.append(tensor + draw.to(device=tensor.device, dtype=tensor.dtype))
    return noisy


def noisy_accuracy(correct: int, total: int, noise_std: float, generator: torch.Generator) -> float:
    """A released validation score: (count of correct predictions + N(0, noise_std^2)) / total.

    Adding or removing one validation example changes the count by at most 1, so this is the
    Gaussian mechanism with sensitivity 1 (`eqdp_ray.privacy.rdp.gaussian_rdp`); `total`, the
    validation-set size, is treated as public like the training-set size (docs/PRIVACY.md). The
    result may leave [0, 1]: clamping it would be post-processing, but the unclamped value is
    an unbiased estimate.
    """
    if total <= 0:
        return float("nan")
    draw = torch.normal(0.0, float(noise_std), size=(1,), generator=generator, dtype=torch.float64)
    return (float(correct) + float(draw.item())) / total
