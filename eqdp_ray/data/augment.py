"""Batched training-time augmentation and normalisation on the tensor's own device.

DP-SGD runs large batches on the accelerator; a per-image Python loop or a CPU round trip
would dominate the step, so both operations are single gathers/broadcasts.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

from .errors import DatasetError

__all__ = ["apply_crop_flip", "augment_batch", "crop_flip_for_rows", "draw_crop_flip", "keyed_uniforms", "normalize"]


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Map indices in [-(n-1), 2n-2] onto [0, n) by mirroring at the edges (no edge repeat)."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def _check_padding(crop_padding: int, h: int, w: int) -> int:
    if isinstance(crop_padding, bool) or not isinstance(crop_padding, numbers.Integral) or crop_padding < 0:
        raise DatasetError(f"crop_padding must be a non-negative int, got {crop_padding!r}")
    p = int(crop_padding)
    if p > 0 and p > min(h, w) - 1:
        raise DatasetError(f"crop_padding={p} is too large for {h}x{w} images (reflect needs < {min(h, w)})")
    return p


def draw_crop_flip(
    num: int, multiplicity: int, crop_padding: int, hflip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random augmentation parameters, (num, multiplicity, 3) int64: row offset, column offset, flip.

    Drawn from a generator for `augment_batch`; the trainer draws its sampled rows' parameters with
    ``crop_flip_for_rows`` instead. Row r's parameters come from the r-th triple of one uniform
    stream, so they do not depend on `num`.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    uniform = torch.rand((num, multiplicity, 3), generator=generator, device=gen_device, dtype=torch.float64)
    return _crop_flip_from_uniforms(uniform, crop_padding, hflip)


def crop_flip_for_rows(rows: torch.Tensor, key: int, multiplicity: int, crop_padding: int, hflip: bool) -> torch.Tensor:
    """Augmentation parameters of the data set's `rows`, (len(rows), multiplicity, 3) int64 as
    ``draw_crop_flip`` gives, each row's a function of (key, row) alone.

    A step draws them for its sampled rows only (work and memory in the batch, not the data set),
    and an example's augmentation does not depend on which others were sampled or how many rows
    the data set has."""
    uniform = keyed_uniforms(key, rows, multiplicity * 3).view(len(rows), multiplicity, 3)
    return _crop_flip_from_uniforms(uniform, crop_padding, hflip)


_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def keyed_uniforms(key: int, rows: torch.Tensor, per_row: int) -> torch.Tensor:
    """(len(rows), per_row) float64 uniforms on [0, 1): SplitMix64 (Steele, Lea & Flood 2014) of the
    counter row * per_row + j from the state `key`, a counter-based generator, so any row's numbers
    come without drawing the others'. Unsigned 64-bit numpy arithmetic wraps, as the mixer needs."""
    if not 0 <= key < 2**64:
        raise ValueError(f"the key must be a 64-bit unsigned integer, got {key}")
    counters = rows.detach().cpu().numpy().astype(np.uint64)[:, None] * np.uint64(per_row)
    counters = counters + np.arange(per_row, dtype=np.uint64)[None, :] + np.uint64(1)
    z = np.uint64(key) + counters * _GOLDEN_GAMMA
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) * 2.0**-53)


def _crop_flip_from_uniforms(uniform: torch.Tensor, crop_padding: int, hflip: bool) -> torch.Tensor:
    choices = 2 * crop_padding + 1 if crop_padding > 0 else 1
    offsets = (uniform[..., :2] * choices).long().clamp_(max=choices - 1)
    flip = (uniform[..., 2:] < 0.5).long() if hflip else torch.zeros_like(offsets[..., :1])
    return torch.cat([offsets, flip], dim=-1)


def apply_crop_flip(x: torch.Tensor, params: torch.Tensor, crop_padding: int) -> torch.Tensor:
    """Crop (after reflect padding) and flip each image of ``x`` by its row of ``params`` (N, 3).

    Equivalent to padding each image by ``crop_padding`` pixels with reflection, cropping the
    H x W window at the drawn offset, and mirroring it left-right where flagged, but done as two
    ``gather`` calls on ``x``'s device without materialising the padded batch.
    """
    if x.ndim != 4:
        raise ValueError(f"augmentation expects N,C,H,W, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    p = _check_padding(crop_padding, h, w)
    params = params.reshape(n, 3).to(x.device)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = _reflect(params[:, 0, None] - p + ar_h, h)  # N,H source rows
    cols_pos = torch.where(params[:, 2, None].bool(), (w - 1) - ar_w, ar_w)  # flip = read columns backwards
    cols = _reflect(params[:, 1, None] - p + cols_pos, w)  # N,W source columns
    out = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def augment_batch(
    x: torch.Tensor,
    *,
    crop_padding: int,
    hflip: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop (after reflect padding) and optional random horizontal flip, per example.

    Works for any dtype. ``generator`` makes it reproducible; its device may differ from
    ``x``'s (the random parameters are drawn there and moved). Returns a new N,C,H,W tensor.
    """
    if x.ndim != 4:
        raise ValueError(f"augment_batch expects N,C,H,W, got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    p = _check_padding(crop_padding, h, w)
    if (p == 0 and not hflip) or n == 0:
        return x.clone()
    if generator is None:
        generator = torch.Generator(device=x.device)
        generator.seed()
    return apply_crop_flip(x, draw_crop_flip(n, 1, p, hflip, generator).reshape(n, 3), p)


def normalize(x_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images (…,C,H,W) -> float32 ``(x/255 - mean) / std`` per channel, on x's device.

    Kept separate from loading so the uint8 copy (4x smaller) is what lives in memory and
    travels to the device; conversion happens per batch.
    """
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 pixels, got {x_uint8.dtype}; it divides by 255")
    if x_uint8.ndim < 3:
        raise ValueError(f"normalize expects ...,C,H,W, got shape {tuple(x_uint8.shape)}")
    c = x_uint8.shape[-3]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"need {c} mean and std values (one per channel), got {len(mean)} and {len(std)}")
    m = torch.tensor(mean, dtype=torch.float32, device=x_uint8.device).view(c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x_uint8.device).view(c, 1, 1)
    return (x_uint8.to(torch.float32) / 255.0 - m) / s
