"""Shifted validation copies: each is deterministic, keeps size and range, and corruptions grow with severity."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from train.shifts import SEVERITY_FREE, SHIFTS, Shifted, parse_shifts, shift_label


def _photo(seed: int = 0, size=(40, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    smooth = rng.random((size[1] // 4, size[0] // 4, 3))
    return Image.fromarray((smooth * 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)


def _psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_deterministic_same_size_and_range_and_it_changes_the_image(name):
    image = _photo()
    for severity in (1, 3, 5):
        first, again = SHIFTS[name](image, severity), SHIFTS[name](image.copy(), severity)
        assert first.size == image.size and first.mode == "RGB"
        assert np.array_equal(np.asarray(first), np.asarray(again))
        assert not np.array_equal(np.asarray(first), np.asarray(image))
    other = SHIFTS[name](_photo(1), 3)
    assert other.size == image.size  # a different image gets its own draws (noise is not one fixed pattern)


@pytest.mark.parametrize("name", sorted(set(SHIFTS) - set(SEVERITY_FREE)))
def test_corruptions_grow_with_severity(name):
    images = [_photo(seed) for seed in range(4)]
    psnr = [np.mean([_psnr(im, SHIFTS[name](im, s)) for im in images]) for s in (1, 2, 3, 4, 5)]
    assert psnr[0] > psnr[2] > psnr[-1], psnr
    if name != "pixelate":  # resizing by 3/4 (severity 4) aliases less than by 0.85, as in CIFAR-10-C itself
        assert all(a >= b - 0.05 for a, b in zip(psnr, psnr[1:], strict=False)), psnr  # never clearer


def test_specs_parse_and_bad_ones_are_named():
    assert parse_shifts("gray, hue,gaussian_noise:5,gray") == [("gray", 3), ("hue", 3), ("gaussian_noise", 5)]
    assert len(parse_shifts("corruptions")) == len(SHIFTS) - len(SEVERITY_FREE)
    assert parse_shifts("") == []
    assert shift_label("gray", 3) == "gray" and shift_label("jpeg", 2) == "jpeg2"
    for bad, message in (("sepia", "unknown shift"), ("jpeg:9", "severity must be 1-5"),
                         ("gray:2", "severity must be 1-5 \\(and only for corruptions\\)"),
                         ("fog:x", "severity must be 1-5")):
        with pytest.raises(ValueError, match=f"--val-shift '{bad}': {message}"):
            parse_shifts(bad)


def test_shifted_transform_shifts_then_applies_the_evaluation_transform():
    image = _photo()
    assert np.array_equal(np.asarray(Shifted("gray", 3, then=lambda im: im)(image)),
                          np.asarray(SHIFTS["gray"](image, 3)))
