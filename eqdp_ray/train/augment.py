"""Crop-and-flip augmentation with the randomness drawn for a whole logical batch at once.

Parameters are drawn per step for the global batch from a public, step-keyed generator, so an
example gets the same augmentations whichever worker and micro-batch it lands in: an N-worker
run and a one-process run see identical inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def draw_crop_flip(num: int, multiplicity: int, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """(num, multiplicity, 3) integers: row offset, column offset, flip flag for each augmentation."""
    offsets = torch.randint(0, 2 * padding + 1, (num, multiplicity, 2), generator=generator)
    flips = torch.randint(0, 2, (num, multiplicity, 1), generator=generator) if hflip else torch.zeros(num, multiplicity, 1, dtype=torch.int64)
    return torch.cat([offsets, flips], dim=2)


def apply_crop_flip(x: torch.Tensor, params: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crops with reflect padding and horizontal flips, as one gather on x's device."""
    n, c, h, w = x.shape
    params = params.to(x.device)
    padded = F.pad(x, (padding,) * 4, mode="reflect") if padding else x
    rows = params[:, 0:1] + torch.arange(h, device=x.device)  # n, h
    cols_forward = torch.arange(w, device=x.device)
    cols = torch.where(params[:, 2:3].bool(), (w - 1) - cols_forward, cols_forward) + params[:, 1:2]  # n, w
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # n, h, w, c
    return out.permute(0, 3, 1, 2).contiguous()
