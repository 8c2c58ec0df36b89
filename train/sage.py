"""SAGE: Saliency-Guided Mixup with Optimal Rearrangements (Ma et al., 2022), exact and fast.

Each image ``x[i]`` is mixed with a partner ``x[perm[i]]`` translated by the integer shift that
maximises the mixed saliency over the image area; the per-pixel mask is the partner-vs-own
saliency ratio and the label weight is the mask's mean. The semantics follow the official code
(github.com/SamsungLabs/SAGE, ``utils_SAGE.py`` and ``main.py``); where they differ from the usual
paper summary the comments say "official".

Why this is fast: the official code evaluates the K candidate shifts of every image by
grid-sampling K shifted copies of a 3Hx3W zero canvas, one image at a time. Here the objective
is rewritten with ``(a^2 + b^2) / (a + b) = a + b - 2ab / (a + b)``:

    objective(shift) = sum(s1) + sum_overlap(s2) - 2 * sum_overlap(s1 * s2 / (s1 + s2))

``sum(s1)`` is the same for every shift, ``sum_overlap(s2)`` is an O(1) box sum on an integral
image, and only the harmonic term needs the overlapping windows: one slice of each map per shift,
batched over images, and no canvas or shifted copy is ever built.

Why the argmax is exact: every per-pixel term is truncated to an integer multiple of a grid of
about 2^-52 times the larger map total before summing, so all sums are exact integers in float64
and the objective no longer depends on summation order. Candidates whose objectives are mathematically
equal because they add up the same pixel values (e.g. a partner blob landing on different empty
areas) therefore tie exactly, and the tie goes to the first candidate, as ``torch.argmax`` does in
the official code. Quantisation moves each objective by at most ``n_pixels * 2^-52`` of the total.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import Tensor

_MANTISSA_BITS = 52


def saliency_from_grad(grad: Tensor, kernel_size: int = 5, sigma: float = 1.0) -> Tensor:
    """``|dL/dx|`` averaged over channels, Gaussian-blurred like the official code: [B, H, W]."""
    if grad.ndim != 4:
        raise ValueError(f"grad must be [B, C, H, W], got shape {tuple(grad.shape)}")
    if grad.dtype not in (torch.float32, torch.float64):
        grad = grad.float()  # half-precision sums/normalisation would underflow
    s = grad.abs().mean(dim=1, keepdim=True)
    # Official: transforms.GaussianBlur(sigma=(sigma, sigma)) draws sigma through a float32 tensor.
    sigma = torch.tensor(sigma, dtype=torch.float32).item()
    return TF.gaussian_blur(s, [kernel_size, kernel_size], [sigma, sigma])[:, 0]


def candidate_shifts(h: int, w: int, rand_pos: float, generator: torch.Generator | None = None) -> Tensor:
    """A random subset of all translations (dy, dx), in the official order: LongTensor [K, 2].

    Official: the (2w-1)^2 positions are enumerated with dx as the slow index, shuffled by
    ``randperm`` and the first ``int(n * rand_pos)`` kept; the zero shift is not forced in and
    rand_pos >= 1 keeps all of them (still shuffled, which only matters for ties). Official code
    assumes square images; for h != w the same layout is used with 2h-1 values of dy.
    Ours keeps at least one candidate where the official code would crash on an empty set.
    """
    _check(_real(rand_pos) and rand_pos > 0, "rand_pos", "a finite number > 0", rand_pos)
    n_dy, n_dx = 2 * h - 1, 2 * w - 1
    n = n_dy * n_dx
    k = max(1, min(n, int(n * rand_pos)))
    flat = torch.randperm(n, generator=generator)[:k]
    return torch.stack([flat % n_dy - (h - 1), flat // n_dy - (w - 1)], dim=1)


def best_shifts(s1: Tensor, s2: Tensor, shifts: Tensor) -> Tensor:
    """Per image, the candidate shift of the (partner-aligned) ``s2`` maximising the mixed saliency.

    ``s1``, ``s2``: non-negative [B, H, W]; ``shifts``: [K, 2] as (dy, dx), where the shifted map is
    ``s2'[y, x] = s2[y - dy, x - dx]`` with zero fill. Returns LongTensor [B, 2].
    """
    if s1.ndim != 3 or s1.shape != s2.shape:
        raise ValueError(f"s1 and s2 must both be [B, H, W], got {tuple(s1.shape)} and {tuple(s2.shape)}")
    _, h, w = s1.shape
    shifts = shifts.to("cpu", torch.long)
    if shifts.ndim != 2 or shifts.shape[1] != 2 or len(shifts) == 0:
        raise ValueError(f"shifts must be a non-empty [K, 2] tensor, got shape {tuple(shifts.shape)}")
    if (shifts[:, 0].abs() >= h).any() or (shifts[:, 1].abs() >= w).any():
        raise ValueError(f"shifts must lie in [-(H-1), H-1] x [-(W-1), W-1] for H, W = {h}, {w}")
    if (s1 < 0).any() or (s2 < 0).any():
        raise ValueError("s1 and s2 must be non-negative saliency maps")

    a = s1.detach().to(torch.float64)
    b = s2.detach().to(torch.float64)
    # Per-image power-of-two scale putting each total below 2^52: keeps all integer sums exact.
    totals = torch.maximum(a.sum(dim=(1, 2)), b.sum(dim=(1, 2)))
    scale = torch.ldexp(torch.ones_like(totals), _MANTISSA_BITS - torch.frexp(totals).exponent)[:, None, None]
    integral = F.pad(torch.trunc(b * scale).cumsum(2).cumsum(1), (1, 0, 1, 0))  # exact: integers < 2^52
    # 1 / (1/a + 1/b) is the harmonic term ab / (a + b); a zero map value gives inf -> term 0, no 0/0.
    # Batch-last layout: every overlap window is then a few long contiguous runs of memory.
    inv_a = ((1.0 / scale) / a).permute(1, 2, 0).contiguous()
    inv_b = ((1.0 / scale) / b).permute(1, 2, 0).contiguous()

    n_img = len(a)
    harmonic = torch.empty(len(shifts), n_img, dtype=torch.float64, device=a.device)
    buffer = torch.empty(h * w * n_img, dtype=torch.float64, device=a.device)
    one = torch.ones((), dtype=torch.float64, device=a.device)
    for k, (dy, dx) in enumerate(shifts.tolist()):
        oh, ow = h - abs(dy), w - abs(dx)
        y1, x1, y2, x2 = max(dy, 0), max(dx, 0), max(-dy, 0), max(-dx, 0)
        window = buffer[: oh * ow * n_img].view(oh, ow, n_img)
        torch.add(inv_a[y1 : y1 + oh, x1 : x1 + ow], inv_b[y2 : y2 + oh, x2 : x2 + ow], out=window)
        # One fused op: reciprocal and truncation onto the integer grid.
        torch.div(one, window, rounding_mode="trunc", out=window)
        torch.sum(window, dim=(0, 1), out=harmonic[k])

    # Box sum of the quantised partner saliency over each shift's overlap, all shifts at once.
    dy, dx = shifts[:, 0].to(a.device), shifts[:, 1].to(a.device)
    top, left = (-dy).clamp(min=0), (-dx).clamp(min=0)
    bottom, right = top + h - dy.abs(), left + w - dx.abs()
    visible = integral[:, bottom, right] - integral[:, top, right] - integral[:, bottom, left] + integral[:, top, left]
    score = visible.T.long() - 2 * harmonic.long()  # objective - sum(s1), scaled; exact integers
    return shifts.to(a.device)[score.argmax(dim=0)]  # argmax: first maximum, as in the official code


def shift_images(images: Tensor, shifts: Tensor) -> Tensor:
    """Translate each image [B, C, H, W] by its own (dy, dx) [B, 2], filling with zeros."""
    n, c, h, w = images.shape
    shifts = shifts.to(images.device)
    rows = torch.arange(h, device=images.device) - shifts[:, :1]  # [B, H] source row of each output row
    cols = torch.arange(w, device=images.device) - shifts[:, 1:]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    source = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
    # Out-of-image pixels read an appended zero, so one gather does the shift and the zero fill.
    source = torch.where(inside, source, h * w).view(n, 1, h * w).expand(n, c, h * w)
    flat = torch.cat([images.reshape(n, c, h * w), images.new_zeros(n, c, 1)], dim=2)
    return flat.gather(2, source).view(n, c, h, w)


def _budget(saliency: Tensor, weight: float) -> Tensor:
    # Official normalize_grad: divide by the sum, then multiply by max(weight, 1e-12). The floor on
    # the sum is ours: it only changes an all-zero map, which the official code turns into NaNs.
    total = saliency.sum(dim=(1, 2), keepdim=True).clamp(min=torch.finfo(saliency.dtype).tiny)
    return saliency / total * max(weight, 1e-12)


def sage_mix(x: Tensor, saliency: Tensor, perm: Tensor, lam: float, shifts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mix ``x`` with ``x[perm]`` given saliency [B, H, W], lambda and candidate shifts.

    Returns (mixed images, per-image weight of the own label in [0, 1], chosen shifts [B, 2]).
    """
    s1 = _budget(saliency, lam)
    s2 = _budget(saliency[perm], 1.0 - lam)
    chosen = best_shifts(s1, s2, shifts)
    s2 = shift_images(s2[:, None], chosen)[:, 0]
    partner = shift_images(x[perm], chosen)
    # Official: where both saliencies are 0 the mask is 0, so the (possibly zero-filled) partner wins.
    mask = s1 / (s1 + s2).clamp(min=1e-16)
    m = mask[:, None]
    mixed = x * m + partner * (1 - m)
    return mixed.to(x.dtype), mask.mean(dim=(1, 2)), chosen


def _check(condition: bool, name: str, requirement: str, value: object) -> None:
    if not condition:
        raise ValueError(f"{name} must be {requirement}, got {value!r}")


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class SageMix:
    """SAGE mixing as a callable, like ``timm.data.Mixup``: ``mixer(x, target, input_grad)``.

    Returns (mixed_x, soft_target), the soft target being a [B, num_classes] float32 tensor for
    ``timm.loss.SoftTargetCrossEntropy``. ``mix_enabled = False`` (or a batch drawn with
    probability 1 - prob) returns ``x`` itself and the (label-smoothed) one-hot target.
    ``last_weights`` holds the per-image weight of each image's own label from the last call.
    """

    def __init__(self, num_classes: int, alpha: float = 1.0, upper_lambda: float = 0.7, rand_pos: float = 0.01,
                 kernel_size: int = 5, sigma: float = 1.0, label_smoothing: float = 0.0, prob: float = 1.0,
                 mix_enabled: bool = True, generator: torch.Generator | None = None) -> None:
        _check(_int(num_classes) and num_classes >= 1, "num_classes", "a positive int", num_classes)
        _check(_real(alpha) and alpha >= 0, "alpha", "a finite number >= 0", alpha)
        _check(_real(upper_lambda) and 0 < upper_lambda <= 1, "upper_lambda", "in (0, 1]", upper_lambda)
        _check(_real(rand_pos) and rand_pos > 0, "rand_pos", "a finite number > 0", rand_pos)
        _check(_int(kernel_size) and kernel_size > 0 and kernel_size % 2 == 1, "kernel_size", "a positive odd int",
               kernel_size)
        _check(_real(sigma) and sigma > 0, "sigma", "a finite number > 0", sigma)
        _check(_real(label_smoothing) and 0 <= label_smoothing < 1, "label_smoothing", "in [0, 1)", label_smoothing)
        _check(_real(prob) and 0 <= prob <= 1, "prob", "in [0, 1]", prob)
        _check(generator is None or isinstance(generator, torch.Generator), "generator", "a torch.Generator",
               generator)
        self.num_classes, self.alpha, self.upper_lambda, self.rand_pos = num_classes, alpha, upper_lambda, rand_pos
        self.kernel_size, self.sigma, self.label_smoothing, self.prob = kernel_size, sigma, label_smoothing, prob
        self.mix_enabled = mix_enabled
        self.generator = generator
        self.last_weights: Tensor | None = None

    def sample(self, batch_size: int, h: int, w: int) -> tuple[float, Tensor, Tensor]:
        """Draw (lam, perm, candidate shifts) for one batch, in the order ``__call__`` does."""
        if self.alpha == 0:
            lam = 0.5  # official main.py: mixup_alpha == 0 means lambda 0.5
        else:  # one lambda per batch, Beta(alpha, alpha) like the official get_lambda
            seed = int(torch.randint(2**62, (1,), generator=self.generator))
            lam = float(np.random.default_rng(seed).beta(self.alpha, self.alpha))
        perm = torch.randperm(batch_size, generator=self.generator)
        return lam * self.upper_lambda, perm, candidate_shifts(h, w, self.rand_pos, self.generator)

    def one_hot(self, target: Tensor) -> Tensor:
        """timm-style smoothed one-hot: 1 - eps + eps/C on the class, eps/C elsewhere."""
        off = self.label_smoothing / self.num_classes
        return F.one_hot(target, self.num_classes).float() * (1.0 - self.label_smoothing) + off

    @torch.no_grad()
    def __call__(self, x: Tensor, target: Tensor, input_grad: Tensor) -> tuple[Tensor, Tensor]:
        half = self.kernel_size // 2  # the blur's reflect padding needs H, W > half
        _check(x.ndim == 4 and min(x.shape[-2:]) > half, "x", f"a [B, C, H, W] batch with H, W > {half}",
               tuple(x.shape))
        _check(target.shape == x.shape[:1] and not target.is_floating_point(), "target",
               "integer class indices of shape [B]", tuple(target.shape))
        _check(input_grad is not None and input_grad.shape == x.shape, "input_grad", f"of shape {tuple(x.shape)}",
               None if input_grad is None else tuple(input_grad.shape))
        mix = self.mix_enabled and self.prob > 0
        if mix and self.prob < 1:
            mix = torch.rand(1, generator=self.generator).item() < self.prob
        y1 = self.one_hot(target)
        if not mix:
            self.last_weights = torch.ones(len(x), device=x.device)
            return x, y1
        # Outside autocast: half-precision saliency would underflow when normalised to sum to lam.
        with torch.autocast(x.device.type, enabled=False):
            saliency = saliency_from_grad(input_grad, self.kernel_size, self.sigma)
            lam, perm, shifts = self.sample(*saliency.shape)
            perm = perm.to(x.device)
            mixed, weight, _ = sage_mix(x, saliency, perm, lam, shifts)
        self.last_weights = weight
        weight = weight.float()[:, None]
        return mixed, weight * y1 + (1 - weight) * y1[perm]


SAGE_LOSSES = ("official", "ce")


def softmax_bce(logits: Tensor, soft_target: Tensor) -> Tensor:
    """The official SAGE code's loss (inherited from Puzzle Mix): `BCELoss` on the softmax, averaged
    over batch and classes. In float32: binary cross-entropy is not autocast-safe."""
    return F.binary_cross_entropy(logits.float().softmax(dim=1), soft_target.float())


def sage_forward_backward(model: torch.nn.Module, criterion: torch.nn.Module, x: Tensor, target: Tensor,
                          mixer: SageMix, update_ratio: float, num_classes: int,
                          scaler: torch.amp.GradScaler | None = None,
                          autocast: Callable[[], AbstractContextManager] = nullcontext,
                          loss: str = "ce") -> dict[str, float]:
    """One SAGE step's gradients, accumulated into ``.grad`` (no optimizer step).

    The clean batch (hard-label cross-entropy; with ``loss="official"``, `softmax_bce` on its
    smoothed one-hot, as the authors' code) gives the saliency and contributes its parameter
    gradients with weight 1 - update_ratio; the mixed batch (``criterion`` on soft targets) adds
    its gradients with weight update_ratio. Official: the weights are applied by scaling each loss
    before its backward, which leaves existing gradients alone; the input gradient is only
    rescaled, which the saliency normalisation removes. With update_ratio == 1 the clean pass
    differentiates the input only. Under DDP this is just two ordinary backwards. With AMP both
    forwards and losses run under ``autocast()`` and both backwards go through ``scaler``; the
    mixing itself (saliency, shifts, masks) runs outside it, in the input's own dtype.
    """
    _check(0 <= update_ratio <= 1, "update_ratio", "in [0, 1]", update_ratio)
    _check(mixer.num_classes == num_classes, "num_classes", f"equal to mixer.num_classes ({mixer.num_classes})",
           num_classes)
    scale = scaler.scale if scaler is not None else (lambda loss: loss)
    _check(loss in SAGE_LOSSES, "loss", f"one of {SAGE_LOSSES}", loss)
    x = x.detach().requires_grad_()
    with autocast():
        logits = model(x)
        official = loss == "official"
        loss_clean = softmax_bce(logits, mixer.one_hot(target)) if official else F.cross_entropy(logits, target)
    if update_ratio < 1:
        scale(loss_clean * (1 - update_ratio)).backward()
        input_grad = x.grad
    else:
        (input_grad,) = torch.autograd.grad(scale(loss_clean), x)
    mixed_x, soft_target = mixer(x.detach(), target, input_grad)
    with autocast():
        loss_mix = criterion(model(mixed_x), soft_target)
    scale(loss_mix * update_ratio).backward()
    return {"loss_clean": loss_clean.item(), "loss_mix": loss_mix.item(), "lam": mixer.last_weights.mean().item()}
