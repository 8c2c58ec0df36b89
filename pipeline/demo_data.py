"""A built-in demo data set, drawn deterministically at run time: shapes with random textures.

The class is the shape of the largest object; texture and colour are nuisances drawn at random
for every object and the background. A model that learns texture instead of shape fails here,
which is exactly the bias repainting is meant to remove. Every object has a box, so the
detection trainer can run on it too.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from PIL import Image, ImageDraw

DEMO_CLASSES = ("circle", "cross", "ring", "square", "star", "triangle")  # sorted, as ImageFolder sorts
MAX_OBJECTS = 3  # objects per image: the demo label map has ids 0 (background) .. MAX_OBJECTS
TEXTURES = ("solid", "stripes", "checker", "dots", "noise", "gradient")


def demo_rng(dataset_seed: int, index: int) -> np.random.Generator:
    digest = hashlib.sha256(f"demo:{dataset_seed}:{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _texture(rng: np.random.Generator, size: int) -> Image.Image:
    kind = TEXTURES[rng.integers(len(TEXTURES))]
    c1, c2 = rng.integers(0, 256, size=(2, 3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "solid":
        t = np.zeros((size, size), np.float32)
    elif kind == "stripes":
        angle, period = rng.uniform(0, math.pi), rng.uniform(4, 12)
        t = (np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period) > 0)
    elif kind == "checker":
        cell = int(rng.integers(3, 9))
        t = ((xx // cell + yy // cell) % 2).astype(bool)
    elif kind == "dots":
        cell = int(rng.integers(5, 11))
        t = ((xx % cell - cell / 2) ** 2 + (yy % cell - cell / 2) ** 2) < (cell / 3.5) ** 2
    elif kind == "noise":
        t = rng.random((size, size), dtype=np.float32)
    else:  # gradient
        angle = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    t = np.asarray(t, np.float32)[..., None]
    rgb = c1[None, None, :] * (1 - t) + c2[None, None, :] * t
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def _shape_mask(kind: str, size: int, cx: float, cy: float, r: float, turn: float) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)

    def polygon(n: int, radii: list[float]) -> list[tuple[float, float]]:
        return [
            (cx + radii[k % len(radii)] * math.cos(turn + 2 * math.pi * k / n),
             cy + radii[k % len(radii)] * math.sin(turn + 2 * math.pi * k / n))
            for k in range(n)
        ]

    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        draw.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=0)
    elif kind == "square":
        draw.polygon(polygon(4, [r]), fill=255)
    elif kind == "triangle":
        draw.polygon(polygon(3, [r]), fill=255)
    elif kind == "star":
        draw.polygon(polygon(10, [r, r * 0.45]), fill=255)
    else:  # cross: two bars
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)
    return mask


def render_demo(dataset_seed: int, index: int, size: int) -> tuple[Image.Image, int, list, list]:
    """Draw demo image `index`: (image, class of the largest shape, xywh boxes, box classes)."""
    image, label, boxes, labels, _ = render_demo_layers(dataset_seed, index, size)
    return image, label, boxes, labels


def render_demo_layers(dataset_seed: int, index: int, size: int) -> tuple[Image.Image, int, list, list, np.ndarray]:
    """`render_demo` plus its label map: uint16, 0 = background, i + 1 = the i-th object drawn (a
    later object covers an earlier one), the exact layout the `demo` segmenter gives the repainter."""
    rng = demo_rng(dataset_seed, index)
    image = _texture(rng, size)
    layout = np.zeros((size, size), np.uint16)
    n_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    radii = sorted(rng.uniform(0.12, 0.3, size=n_objects) * size, reverse=True)
    radii[0] = max(radii[0], 0.22 * size)  # the class-defining shape is clearly the largest
    boxes, labels = [], []
    for r in radii:
        label = int(rng.integers(len(DEMO_CLASSES)))
        cx, cy = rng.uniform(r, size - r, size=2)
        mask = _shape_mask(DEMO_CLASSES[label], size, cx, cy, r, rng.uniform(0, 2 * math.pi))
        bbox = mask.getbbox()
        if bbox is None:
            continue
        image = Image.composite(_texture(rng, size), image, mask)
        layout[np.asarray(mask) > 127] = len(labels) + 1
        x0, y0, x1, y1 = bbox
        boxes.append([x0, y0, x1 - x0, y1 - y0])
        labels.append(label)
    return image, labels[0], boxes, labels, layout
