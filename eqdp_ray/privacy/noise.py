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
