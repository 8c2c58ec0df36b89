"""Segmenters `S`: an approximate label map per image, the layout the repainter keeps.

Three implementations behind one call, `segmenter(image, meta) -> uint16 label map`:
- Felzenszwalb-Huttenlocher (`fh`, the default, unsupervised): segment ids are arbitrary, so they
  are renumbered by area rank (0 = largest); the generator sees the K largest segments as their
  own channels and the rest in one "other" channel.
- a torchvision DeepLabV3 / LR-ASPP with weights from a local file (`deeplab:WEIGHTS`): class ids.
- COCO ground-truth polygons (`coco`): 0 background, category index + 1.
- the built-in demo's own shape masks (`demo`, the default for `--source demo`): 0 background,
  i + 1 the i-th object. FH over-segments the demo's textures (a checkerboard becomes dozens of
  segments), and the demo knows its shapes exactly, as COCO knows its polygons.
`label_channels` turns a map into the generator's input: one-hot channels plus a boundary channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image
from skimage.segmentation import felzenszwalb, find_boundaries


def rank_by_area(labels: np.ndarray) -> np.ndarray:
    """Renumber segments 0..n-1 by decreasing area (ties by first appearance): a stable layout."""
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))  # largest first; equal areas by raster position
    rank = np.empty(len(ids), np.int64)
    rank[order] = np.arange(len(ids))
    return rank[np.searchsorted(ids, labels)].astype(np.uint16)


class Segmenter(Protocol):
    """What every segmenter is: an image (and its record's metadata) to a uint16 label map."""

    def __call__(self, image: Image.Image, meta: dict | None = None) -> np.ndarray: ...


@dataclass
class FelzenszwalbSegmenter:
    scale: float = 100.0
    sigma: float = 0.8
    min_size: int = 20
    name: str = "fh"

    @property
    def params(self) -> dict[str, Any]:
        return {"scale": self.scale, "sigma": self.sigma, "min_size": self.min_size}

    def __call__(self, image: Image.Image, meta: dict | None = None) -> np.ndarray:
        labels = felzenszwalb(np.asarray(image), scale=self.scale, sigma=self.sigma, min_size=self.min_size)
        return rank_by_area(labels)


@dataclass
class DeepLabSegmenter:
    """A torchvision segmentation model from a local weights file (never downloaded)."""

    weights: str
    arch: str = "lraspp_mobilenet_v3_large"
    num_classes: int = 21
    name: str = "deeplab"
    _model: Any = field(default=None, repr=False)

    @property
    def params(self) -> dict[str, Any]:
        return {"weights": self.weights, "arch": self.arch, "num_classes": self.num_classes}

    def _load(self):
        import torch
        import torchvision.models.segmentation as seg

        builders = {"lraspp_mobilenet_v3_large": seg.lraspp_mobilenet_v3_large,
                    "deeplabv3_mobilenet_v3_large": seg.deeplabv3_mobilenet_v3_large,
                    "deeplabv3_resnet50": seg.deeplabv3_resnet50}
        if self.arch not in builders:
            raise ValueError(f"segmenter arch {self.arch!r}: expected one of {sorted(builders)}")
        model = builders[self.arch](weights=None, weights_backbone=None, num_classes=self.num_classes)
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.weights}: segmenter weights not found") from None
        model.load_state_dict(state)
        return model.eval()

    def __call__(self, image: Image.Image, meta: dict | None = None) -> np.ndarray:
        import torch

        if self._model is None:
            self._model = self._load()
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        x = torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1)
        x = (x - mean[:, None, None]) / std[:, None, None]
        with torch.no_grad():
            logits = self._model(x[None])["out"][0]
        return logits.argmax(0).numpy().astype(np.uint16)


@dataclass
class CocoPolygonSegmenter:
    """Ground-truth polygons (already scaled to the stored image): category index + 1, 0 background."""

    name: str = "coco"

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def __call__(self, image: Image.Image, meta: dict | None = None) -> np.ndarray:
        from pycocotools import mask as mask_utils

        if meta is None or "segmentations" not in meta:
            raise ValueError("the coco segmenter needs COCO polygons in the sample's metadata")
        w, h = image.size
        labels = np.zeros((h, w), np.uint16)
        # Paint large objects first so that smaller ones stay visible on top.
        order = sorted(range(len(meta["segmentations"])), key=lambda i: -(meta["areas"][i] or 0))
        for i in order:
            polygons = meta["segmentations"][i]
            if not isinstance(polygons, list) or not polygons:
                continue  # RLE crowds and boxes without polygons leave the background
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w)))
            labels[mask.astype(bool)] = meta["box_labels"][i] + 1
        return labels


@dataclass
class DemoMaskSegmenter:
    """The demo's layout, drawn again from the sample's index (`demo/<index>`) at the source size and
    resized (nearest) to the stored image, so `--max-side` keeps it aligned."""

    dataset_seed: int = 0  # what `--source demo` draws with
    name: str = "demo"

    @property
    def params(self) -> dict[str, Any]:
        return {"dataset_seed": self.dataset_seed}

    def __call__(self, image: Image.Image, meta: dict | None = None) -> np.ndarray:
        from .demo_data import render_demo_layers

        source_id = (meta or {}).get("source_id", "")
        kind, _, index = source_id.partition("/")
        if kind != "demo" or not index.isdigit():
            raise ValueError(f"{source_id or 'image'}: the demo segmenter only knows demo images (demo/<index>)")
        size = int(meta.get("source_width", image.size[0]))
        layout = render_demo_layers(self.dataset_seed, int(index), size)[4]
        if layout.shape[::-1] != image.size:
            layout = np.asarray(Image.fromarray(layout).resize(image.size, Image.Resampling.NEAREST))
        return layout.astype(np.uint16)


def _fh_from_params(spec: str, text: str) -> FelzenszwalbSegmenter:
    """`scale=300,sigma=0.8,min_size=50`: any of the three, in any order."""
    kinds = {"scale": float, "sigma": float, "min_size": int}
    values = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name not in kinds:
            raise ValueError(f"--segmenter {spec!r}: unknown fh parameter {name!r} (expected {', '.join(kinds)})")
        try:
            values[name] = kinds[name](value)
        except ValueError:
            raise ValueError(f"--segmenter {spec!r}: {name}={value!r} is not a number") from None
        if values[name] <= 0:
            raise ValueError(f"--segmenter {spec!r}: {name} must be positive")
    return FelzenszwalbSegmenter(**values)


def make_segmenter(spec: str) -> Segmenter:
    """`fh[:scale=S,sigma=G,min_size=M]`, `deeplab:WEIGHTS`, `coco` or `demo`."""
    kind, _, rest = spec.partition(":")
    if kind == "fh":
        return _fh_from_params(spec, rest) if rest else FelzenszwalbSegmenter()
    if kind == "deeplab" and rest:
        return DeepLabSegmenter(rest)
    if kind == "coco" and not rest:
        return CocoPolygonSegmenter()
    if kind == "demo" and not rest:
        return DemoMaskSegmenter()
    raise ValueError(f"--segmenter {spec!r}: expected fh[:scale=S,sigma=G,min_size=M], deeplab:WEIGHTS, coco or demo")


def label_channels(labels: np.ndarray, num_channels: int) -> np.ndarray:
    """One-hot [num_channels + 1, H, W] float32: ids >= num_channels - 1 share the last ("other")
    channel, and a final channel marks segment boundaries, so shapes stay visible to SPADE."""
    if num_channels < 2:
        raise ValueError(f"num_channels must be >= 2, got {num_channels}")
    folded = np.minimum(labels, num_channels - 1)
    out = np.zeros((num_channels + 1, *labels.shape), np.float32)
    np.put_along_axis(out[:num_channels], folded[None].astype(np.int64), 1.0, axis=0)
    out[num_channels] = find_boundaries(labels, mode="thick")
    return out
