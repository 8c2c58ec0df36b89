"""The official SAGE repository's shift search strategy, re-implemented for comparison only.

Strategy of ``utils_SAGE.sage`` in github.com/SamsungLabs/SAGE (MIT): pad each saliency map and
image into a 3Hx3W zero canvas, express every candidate shift as an affine translation, and for
each image in a Python loop ``grid_sample`` K translated copies of the partner canvas at once,
computing the mixed saliency over the whole canvas and reading off its centre. Written from that
description; the float dtype is the inputs' (the official code runs float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _translation_grid(shifts: Tensor, n: int, h: int, w: int, like: Tensor) -> Tensor:
    # Sampling at (x - dx, y - dy) moves content by (+dx, +dy); normalised units are 2 / (3w) per pixel.
    theta = torch.eye(2, 3, dtype=like.dtype, device=like.device).repeat(len(shifts), 1, 1)
    theta[:, 0, 2] = -2 * shifts[:, 1].to(like) / (3 * w)
    theta[:, 1, 2] = -2 * shifts[:, 0].to(like) / (3 * h)
    return F.affine_grid(theta, [len(shifts), n, 3 * h, 3 * w], align_corners=False)


def _translate(canvas: Tensor, grid: Tensor) -> Tensor:
    return F.grid_sample(canvas, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _mixed_saliency(one: Tensor, two: Tensor) -> Tensor:
    mask = one / (one + two).clamp(min=1e-16)
    return one * mask + two * (1 - mask)


def canvas_best_shifts(s1: Tensor, s2: Tensor, shifts: Tensor) -> Tensor:
    """Same contract as ``train.sage.best_shifts``: [B, H, W] maps, [K, 2] (dy, dx) -> [B, 2]."""
    n_img, h, w = s1.shape
    pad1 = F.pad(s1[:, None], (w, w, h, h))
    pad2 = F.pad(s2[:, None], (w, w, h, h))
    grid = _translation_grid(shifts, 1, h, w, s1)
    chosen = torch.empty(n_img, 2, dtype=torch.long)
    for i in range(n_img):
        moved = _translate(pad2[i].expand(len(shifts), 1, 3 * h, 3 * w), grid)
        mixed = _mixed_saliency(pad1[i].expand_as(moved), moved)
        chosen[i] = shifts[mixed[:, :, h : 2 * h, w : 2 * w].sum(dim=(1, 2, 3)).argmax()]
    return chosen


def canvas_sage_mix(x: Tensor, saliency: Tensor, perm: Tensor, lam: float,
                    shifts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as ``train.sage.sage_mix``, with the canvas search and canvas mixing."""
    n_img, c, h, w = x.shape
    padded = F.pad(saliency[:, None], (w, w, h, h))
    s1 = padded / padded.sum(dim=(1, 2, 3), keepdim=True) * max(lam, 1e-12)
    s2 = padded[perm] / padded[perm].sum(dim=(1, 2, 3), keepdim=True) * max(1 - lam, 1e-12)
    chosen = canvas_best_shifts(s1[:, 0, h : 2 * h, w : 2 * w], s2[:, 0, h : 2 * h, w : 2 * w], shifts)
    grid = _translation_grid(chosen, c, h, w, s1)
    s2_moved = _translate(s2, grid)
    mask = s1 / (s1 + s2_moved).clamp(min=1e-16)
    x2_moved = _translate(F.pad(x[perm], (w, w, h, h)), grid)
    mixed = F.pad(x, (w, w, h, h)) * mask + x2_moved * (1 - mask)
    centre = (slice(None), slice(None), slice(h, 2 * h), slice(w, 2 * w))
    return mixed[centre], mask[centre].mean(dim=(1, 2, 3)), chosen
