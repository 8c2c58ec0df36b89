"""Shifted copies of a validation set, made at evaluation time: colour shifts and common corruptions.

`--val-shift gray,hue,gaussian_noise:3,...` evaluates the model on each named copy too. Colour
shifts (`gray`, `hue` = hue rotated by 90 degrees, `low_contrast`) are where a texture- and
colour-biased model fails; the corruptions follow the CIFAR-10-C benchmark's description
(Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019): five severities each, with the parameters its CIFAR set uses. Written
from the paper, not its code; `fog` is a cheaper stand-in (a smooth random overlay, not the
paper's plasma fractal). Every function is deterministic: random draws come from the image's own
content and the shift's name and severity, so the same image gets the same corruption in every run.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from manifests.contract import derive_seed

SEVERITIES = (1, 2, 3, 4, 5)


def _rng(image: Image.Image, name: str, severity: int) -> np.random.Generator:
    content = hashlib.sha256(image.tobytes()).hexdigest()[:16]
    return np.random.default_rng(derive_seed("val-shift", name, severity, content))


def _float(image: Image.Image) -> np.ndarray:
    return np.asarray(image, np.float32) / 255.0


def _image(array: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8))


def gray(image: Image.Image, severity: int = 3) -> Image.Image:
    """Grayscale (ITU-R 601 luma), kept as 3 channels; severity does not apply."""
    return image.convert("L").convert("RGB")


def hue(image: Image.Image, severity: int = 3) -> Image.Image:
    """Hue rotated by 90 degrees (PIL's HSV, hue 0-255 for 0-360); severity does not apply."""
    h, s, v = image.convert("HSV").split()
    rotated = Image.fromarray(((np.asarray(h, np.int32) + 64) % 256).astype(np.uint8))
    return Image.merge("HSV", [rotated, s, v]).convert("RGB")


def low_contrast(image: Image.Image, severity: int = 3) -> Image.Image:
    """Contrast halved around the image's mean; severity does not apply (see `contrast`)."""
    x = _float(image)
    return _image((x - x.mean()) * 0.5 + x.mean())


def gaussian_noise(image: Image.Image, severity: int = 3) -> Image.Image:
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    x = _float(image)
    return _image(x + _rng(image, "gaussian_noise", severity).normal(0, sigma, x.shape))


def gaussian_blur(image: Image.Image, severity: int = 3) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur((0.4, 0.6, 0.7, 0.8, 1.0)[severity - 1]))


def jpeg(image: Image.Image, severity: int = 3) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=(80, 65, 58, 50, 40)[severity - 1])
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def brightness(image: Image.Image, severity: int = 3) -> Image.Image:
    """Value (HSV) raised by the severity's amount, as CIFAR-10-C does."""
    hsv = np.asarray(image.convert("HSV"), np.float32) / 255.0
    hsv[..., 2] = np.clip(hsv[..., 2] + (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1], 0, 1)
    return Image.fromarray((hsv * 255 + 0.5).astype(np.uint8), "HSV").convert("RGB")


def contrast(image: Image.Image, severity: int = 3) -> Image.Image:
    x = _float(image)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return _image((x - mean) * (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1] + mean)


def pixelate(image: Image.Image, severity: int = 3) -> Image.Image:
    w, h = image.size
    factor = (0.95, 0.9, 0.85, 0.75, 0.65)[severity - 1]
    small = image.resize((max(1, int(w * factor)), max(1, int(h * factor))), Image.Resampling.BOX)
    return small.resize((w, h), Image.Resampling.BOX)


def fog(image: Image.Image, severity: int = 3) -> Image.Image:
    """A smooth random haze added, then rescaled (CIFAR-10-C's fog amounts; its plasma fractal and
    decay are replaced by bicubic-upsampled noise, which is cheaper)."""
    amount = (0.2, 0.5, 0.75, 1.0, 1.5)[severity - 1]
    w, h = image.size
    coarse = _rng(image, "fog", severity).random((max(2, h // 8), max(2, w // 8))).astype(np.float32)
    haze = np.asarray(Image.fromarray(coarse, "F").resize((w, h), Image.Resampling.BICUBIC), np.float32)
    x = _float(image)
    top = x.max()
    return _image((x + amount * haze[..., None]) * top / (top + amount))


SHIFTS: dict[str, Callable[[Image.Image, int], Image.Image]] = {
    f.__name__: f for f in (gray, hue, low_contrast, gaussian_noise, gaussian_blur, jpeg, brightness, contrast,
                            pixelate, fog)
}
SEVERITY_FREE = ("gray", "hue", "low_contrast")


def parse_shifts(spec: str) -> list[tuple[str, int]]:
    """`gray,hue,gaussian_noise:3,fog` -> [(name, severity)]; severity 3 unless given; `corruptions`
    stands for every corruption at severity 3. Raises ValueError naming the bad entry."""
    shifts: list[tuple[str, int]] = []
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, _, level = entry.partition(":")
        if name == "corruptions" and not level:
            shifts += [(n, 3) for n in SHIFTS if n not in SEVERITY_FREE]
            continue
        if name not in SHIFTS:
            raise ValueError(f"--val-shift {entry!r}: unknown shift; expected one of {', '.join(SHIFTS)} "
                             "or corruptions")
        if level and (not level.isdigit() or int(level) not in SEVERITIES or name in SEVERITY_FREE):
            raise ValueError(f"--val-shift {entry!r}: severity must be 1-5 (and only for corruptions)")
        shifts.append((name, int(level) if level else 3))
    return list(dict.fromkeys(shifts))


def shift_label(name: str, severity: int) -> str:
    """The metric suffix: `gray`, `gaussian_noise3`."""
    return name if name in SEVERITY_FREE else f"{name}{severity}"


class Shifted:
    """A transform: the shifted copy of an RGB image, then `then` (the evaluation transform)."""

    def __init__(self, name: str, severity: int, then: Callable):
        self.function, self.severity, self.then = SHIFTS[name], severity, then

    def __call__(self, image: Image.Image):
        return self.then(self.function(image.convert("RGB"), self.severity))
