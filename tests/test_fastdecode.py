"""The trainer's fast paths give the samples of the plain ones: the crop drawn before a DCT-scaled
JPEG decode (train/fastdecode.py), and uint8 samples normalised per batch."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

from manifests import decode_image
from train.fastdecode import BatchNormalize, CropFirstDecode
from train.stream import seed_augmentation


def _photo(width: int, height: int, seed: int = 0) -> bytes:
    """A JPEG with smooth gradients, edges and some grain, as a photo has."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 100 * np.sin(x / 37.0), 128 + 100 * np.cos(y / 23.0), (x + y) % 256], -1)
    image = Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.integers(0, max(1, width - 60)), rng.integers(0, max(1, height - 60))
        draw.ellipse((x0, y0, x0 + rng.integers(20, 200), y0 + rng.integers(20, 200)),
                     fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _plain(transform, data: bytes, seed: int):
    seed_augmentation(seed)
    return transform(decode_image(data, "x.jpg").image)


def _crop_first(transform, data: bytes, seed: int, sizes: list | None = None):
    def read(draft=None):
        image = decode_image(data, "x.jpg", draft=draft).image
        if sizes is not None:
            sizes.append(image.size)
        return image

    seed_augmentation(seed)
    return CropFirstDecode(transform)(read)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 10 * np.log10(255**2 / max(mse, 1e-12))


def test_batch_normalisation_equals_torchvision_per_image_bit_for_bit():
    per_image = create_transform(32, is_training=True)
    as_uint8 = create_transform(32, is_training=True, use_prefetcher=True)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8))
              for i in range(8)]
    expected = torch.stack([_seeded(per_image, im, i) for i, im in enumerate(images)])
    batch = torch.stack([_seeded(as_uint8, im, i) for i, im in enumerate(images)])
    assert batch.dtype == torch.uint8
    assert torch.equal(BatchNormalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)(batch), expected)


def _seeded(transform, image, seed):
    seed_augmentation(seed)
    return transform(image)


def test_small_images_take_the_plain_path_exactly():
    """CIFAR-sized images are never drafted: the same crop, flip and jitter, bit for bit."""
    transform = create_transform(32, is_training=True, use_prefetcher=True)
    data = _photo(40, 36)
    for seed in range(20):
        assert torch.equal(_crop_first(transform, data, seed), _plain(transform, data, seed))


def test_large_jpegs_are_decoded_smaller_and_match_the_full_decode():
    """A 640x480 JPEG cropped to 64 px: decoded at 1/2 to 1/8 for most crops; the same crop box
    and flip as timm's transform on the full decode (a wrong box or flip would not come close)."""
    transform = create_transform(64, is_training=True, use_prefetcher=True, color_jitter=0.0)
    data = _photo(640, 480)
    sizes, psnrs = [], []
    for seed in range(40):
        fast = _crop_first(transform, data, seed, sizes)
        psnrs.append(_psnr(fast, _plain(transform, data, seed)))
    reduced = sum(s != (640, 480) for s in sizes)
    assert reduced >= 30, sizes  # crops of 8-100 % of the area: most need far fewer than 640 px
    assert min(psnrs) > 36 and np.median(psnrs) > 40, psnrs  # measured: 42.5 and 46.4 dB
    # the box never loses the pixels the output needs: no crop decoded below the output's size
    assert all(min(s) >= 64 for s in sizes)


def test_crop_boxes_and_flips_follow_the_same_seeds_as_timm():
    transform = create_transform(64, is_training=True, use_prefetcher=True, color_jitter=0.0)
    crop = transform.transforms[0]
    data = _photo(640, 480)
    boxes = {"plain": [], "fast": []}
    original = crop.get_params

    def spy(which):
        def get_params(img, scale, ratio):
            box = original(img, scale, ratio)
            boxes[which].append(box)
            return box
        return get_params

    for seed in range(30):
        crop.get_params = spy("plain")
        _plain(transform, data, seed)
        crop.get_params = spy("fast")
        _crop_first(transform, data, seed)
    assert boxes["plain"] == boxes["fast"] and len(set(boxes["plain"])) == 30


def test_draft_is_only_offered_for_upright_single_frame_jpegs():
    calls = []
    png = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 20, 30)).save(png, format="PNG")
    decode_image(png.getvalue(), "x.png", draft=lambda im: calls.append(im.size))
    assert calls == []
    image = decode_image(_photo(300, 200), "x.jpg", draft=lambda im: calls.append(im.size) or (75, 50)).image
    assert calls == [(300, 200)] and image.size == (75, 50)  # 1/4: the least at or above (75, 50)


def test_the_transform_must_start_with_a_random_resized_crop():
    with pytest.raises(ValueError, match="random-resized crop"):
        CropFirstDecode(create_transform(32, is_training=False))
