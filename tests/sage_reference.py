"""A deliberately naive SAGE, written straight from the equations, for tests only.

Plain Python loops over images and candidate shifts, explicit zero-padded shifting, the mixed
saliency summed with ``math.fsum`` (exactly rounded, hence independent of summation order, so
candidates that add up the same pixel values tie exactly and the first one wins).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def reference_saliency(grad: Tensor, kernel_size: int = 5, sigma: float = 1.0) -> Tensor:
    """Mean |grad| over channels, blurred by a normalised Gaussian with reflect padding: [B, H, W]."""
    half = kernel_size // 2
    sigma = torch.tensor(sigma, dtype=torch.float32).item()  # the official GaussianBlur's float32 sigma
    offsets = torch.linspace(-half, half, kernel_size, dtype=grad.dtype)
    g = torch.exp(-0.5 * (offsets / sigma) ** 2)
    g = g / g.sum()
    kernel = torch.outer(g, g)
    out = []
    for image_grad in grad:
        s = image_grad.abs().mean(dim=0)
        padded = F.pad(s[None, None], (half, half, half, half), mode="reflect")[0, 0]
        blurred = torch.zeros_like(s)
        for i in range(kernel_size):
            for j in range(kernel_size):
                blurred += kernel[i, j] * padded[i : i + s.shape[0], j : j + s.shape[1]]
        out.append(blurred)
    return torch.stack(out)


def zero_shift(image: Tensor, dy: int, dx: int) -> Tensor:
    """``out[..., y, x] = image[..., y - dy, x - dx]``, zero where that falls outside the image."""
    h, w = image.shape[-2:]
    padded = F.pad(image, (w, w, h, h))  # zeros all round, then crop the shifted window
    return padded[..., h - dy : 2 * h - dy, w - dx : 2 * w - dx]


def mixed_saliency(s1: Tensor, s2_shifted: Tensor) -> float:
    """sum over pixels of (s1^2 + s2'^2) / (s1 + s2'), pixels with s1 + s2' == 0 contributing 0."""
    a, b = s1.double(), s2_shifted.double()
    den = a + b
    terms = torch.where(den > 0, (a * a + b * b) / torch.where(den > 0, den, 1.0), 0.0)
    return math.fsum(terms.flatten().tolist())


def reference_best_shifts(s1: Tensor, s2: Tensor, shifts: Tensor) -> Tensor:
    chosen = []
    for i in range(len(s1)):
        values = [mixed_saliency(s1[i], zero_shift(s2[i], dy, dx)) for dy, dx in shifts.tolist()]
        best = max(range(len(values)), key=lambda k: (values[k], -k))  # first maximum
        chosen.append(shifts[best].tolist())
    return torch.tensor(chosen, dtype=torch.long)


def reference_sage(x: Tensor, saliency: Tensor, perm: Tensor, lam: float, shifts: Tensor, target: Tensor,
                   num_classes: int, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (mixed images, soft targets, own-label weights, chosen shifts)."""
    s1 = torch.stack([s / s.sum() * max(lam, 1e-12) for s in saliency])
    s2 = torch.stack([saliency[j] / saliency[j].sum() * max(1 - lam, 1e-12) for j in perm.tolist()])
    chosen = reference_best_shifts(s1, s2, shifts)
    off = label_smoothing / num_classes
    on = 1 - label_smoothing + off
    mixed, targets, weights = [], [], []
    for i, j in enumerate(perm.tolist()):
        dy, dx = chosen[i].tolist()
        s2_shifted = zero_shift(s2[i], dy, dx)
        x2_shifted = zero_shift(x[j], dy, dx)
        mask = s1[i] / (s1[i] + s2_shifted).clamp(min=1e-16)  # the official code's 0/0 handling
        mixed.append(x[i] * mask + x2_shifted * (1 - mask))
        weight = mask.mean()
        y1 = torch.full((num_classes,), off)
        y1[target[i]] = on
        y2 = torch.full((num_classes,), off)
        y2[target[j]] = on
        targets.append(weight * y1 + (1 - weight) * y2)
        weights.append(weight)
    return torch.stack(mixed), torch.stack(targets), torch.stack(weights), chosen
