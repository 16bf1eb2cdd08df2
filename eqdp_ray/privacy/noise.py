"""The Gaussian mechanism: ONE draw N(0, sigma^2 C^2) per step, added to the summed clipped gradient.

In a distributed run every rank holds a generator seeded identically (from a secure seed that
is never written anywhere), so each rank computes the very same draw after the all-reduce:
one draw, shared, never one per worker. The generator lives on the CPU so the draw does not
depend on the accelerator.
"""

from __future__ import annotations

import secrets

import torch

from eqdp_ray.privacy._faults import _current_rank, _fault


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
    draws = [torch.normal(0.0, std, size=t.shape, generator=generator, dtype=torch.float64) for t in summed]
    draws = _faulty(draws)
    return [t + d.to(device=t.device, dtype=t.dtype) for t, d in zip(summed, draws)]


def _faulty(draws: list[torch.Tensor]) -> list[torch.Tensor]:
    """The draws as a test-only fault (eqdp_ray.privacy._faults) would break them; unchanged otherwise."""
    missing = _fault("noise_missing_on_rank")
    if _fault("no_noise") is not None or (missing is not None and _current_rank() == missing["rank"]):
        return [torch.zeros_like(d) for d in draws]
    scale = _fault("noise_scale")
    if scale is not None:
        return [d * scale["factor"] for d in draws]
    reused = _fault("reused_noise")
    if reused is not None:
        return reused.setdefault("draws", draws)
    return draws


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
