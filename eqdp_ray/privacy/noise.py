"""The Gaussian mechanism: ONE draw N(0, sigma^2 C^2) per step, added to the summed clipped gradient.

In a distributed run every rank holds a generator seeded identically (from a secure seed that
is never written anywhere), so each rank computes the very same draw after the all-reduce:
one draw, shared, never one per worker. The generator lives on the CPU so the draw does not
depend on the accelerator.
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

import numpy as np
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
    flat = gaussian_draw(sum(t.numel() for t in summed), std, generator)
    draws = [d.view(t.shape) for t, d in zip(summed, flat.split([t.numel() for t in summed]))]
    draws = _faulty(draws)
    return [t + d.to(device=t.device, dtype=t.dtype) for t, d in zip(summed, draws)]


# The draw is made in blocks of this many numbers, each from its own generator seeded by the step's
# generator, so that blocks can be drawn on several cores at once. The block size and the seeds are fixed,
# not the number of threads: every rank, on any machine, draws the same numbers.
DRAW_BLOCK = 2**17
_draw_pool: ThreadPoolExecutor | None = None


def _fill_block(block: torch.Tensor, seed: int, std: float) -> None:
    """Fill a float64 block with N(0, std^2) from a generator of its own (numpy's ziggurat; GIL released).

    numpy's float64 ziggurat, not torch's ``normal_``: about 8 ns a number on one core against 18 for
    torch's Box-Muller (AMD Zen 5, 2026-12-06: WRN-16-4's 2.75M numbers on 2 threads 21-28 -> 12.7 ms,
    docs/BENCHMARKS.md), and its bits come from scalar C code, so they do not depend on the CPU's vector
    unit (a vectorised Box-Muller's did: tried 2026-12-04, not kept).
    """
    values = block.numpy()
    np.random.Generator(np.random.PCG64(seed)).standard_normal(out=values)
    values *= std


def gaussian_draw(count: int, std: float, generator: torch.Generator) -> torch.Tensor:
    """`count` float64 numbers from N(0, std^2), the same on every machine for the same generator state."""
    flat = torch.empty(count, dtype=torch.float64)
    blocks = list(flat.split(DRAW_BLOCK))
    seeds = torch.randint(0, 2**62, (len(blocks),), generator=generator, dtype=torch.int64).tolist()
    if len(blocks) == 1:
        _fill_block(blocks[0], seeds[0], std)
        return flat

    global _draw_pool
    if _draw_pool is None:
        _draw_pool = ThreadPoolExecutor(max(1, min(8, torch.get_num_threads())), thread_name_prefix="eqdp-noise")
    list(_draw_pool.map(lambda pair: _fill_block(*pair, std), zip(blocks, seeds)))
    return flat


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
