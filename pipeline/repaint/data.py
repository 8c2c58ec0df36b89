"""What the repainter sees: square crops at `size`, label maps, and proxy-task targets.

Training and shard-time inference share `to_model_inputs`, so G paints at inference exactly what it
learned on. The training set is built from the job's own records through `process_record`, so a bad
input is skipped and counted here exactly as it is when sharding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from skimage.filters import sobel

from manifests import decode_image

from ..records import RecordSettings, process_record
from ..segment import label_channels
from ..sources import Record
from .config import STRUCTURES


def resize_pair(image: Image.Image, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The image (bicubic) and its label map (nearest, ids stay ids) at size x size."""
    small = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), np.uint8)
    small_labels = np.asarray(Image.fromarray(labels).resize((size, size), Image.Resampling.NEAREST))
    return small, small_labels.astype(np.uint16)


def to_unit_range(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> float [B, 3, S, S] in [-1, 1]: what E, D and T take (G paints in it)."""
    return torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).float() / 127.5 - 1


def edge_strength(image: np.ndarray) -> np.ndarray:
    """The original's edges, [0, 1] float32 HxW: Sobel magnitude of the luminance, divided by its
    98th percentile (so a low-contrast image draws its edges as a high-contrast one does)."""
    magnitude = sobel(image.astype(np.float32).mean(-1) / 255.0)
    return np.clip(magnitude / max(float(np.percentile(magnitude, 98)), 1e-3), 0.0, 1.0).astype(np.float32)


def to_model_inputs(images: np.ndarray, labels: np.ndarray, num_channels: int,
                    structure: str = "segments") -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [B, S, S, 3] and uint16 [B, S, S] -> image in [-1, 1] [B, 3, S, S] and label channels.
    The last channel is the boundary map: the segments' boundaries, or with `structure` "edges" the
    stronger of those and the original's own edges (`edge_strength`), so G also gets the edges
    inside a segment (a wheel, a leg) that the label map folds away; they carry no colour."""
    if structure not in STRUCTURES:
        raise ValueError(f"structure {structure!r}: expected one of {', '.join(STRUCTURES)}")
    x = to_unit_range(images)
    channels = np.stack([label_channels(m, num_channels - 1) for m in labels])
    if structure == "edges":
        edges = np.stack([edge_strength(im) for im in images])
        channels[:, -1] = np.maximum(channels[:, -1], edges)
    return x, torch.from_numpy(channels)


def task_target(meta: dict, num_classes: int, multilabel: bool) -> np.ndarray:
    """CE target (class index) or, for COCO, the multi-hot of the categories present."""
    if multilabel:
        hot = np.zeros(num_classes, np.float32)
        hot[list(meta.get("box_labels", []))] = 1.0
        return hot
    if "label" not in meta:
        raise ValueError(f"{meta['source_id']}: no class label for the proxy task")
    return np.int64(meta["label"])


@dataclass
class RepaintSet:
    """In-memory training set: a few thousand small crops at most, so arrays, not a loader."""

    images: np.ndarray  # uint8 [N, S, S, 3]
    labels: np.ndarray  # uint16 [N, S, S]
    targets: np.ndarray  # int64 [N] or float32 [N, C]
    keys: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def split(self, n_val: int) -> tuple[RepaintSet, RepaintSet]:
        cut = len(self) - n_val
        part = lambda s: RepaintSet(self.images[s], self.labels[s], self.targets[s], self.keys[s])  # noqa: E731
        return part(slice(0, cut)), part(slice(cut, None))

    @staticmethod
    def concat(parts: list[RepaintSet]) -> RepaintSet:
        parts = [p for p in parts if len(p)] or parts[:1]
        return RepaintSet(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                          np.concatenate([p.targets for p in parts]), [k for p in parts for k in p.keys],
                          [s for p in parts for s in p.skipped])


def build_repaint_set(records: list[Record], settings: RecordSettings, segmenter, size: int,
                      num_classes: int, multilabel: bool) -> RepaintSet:
    """Decode, segment and resize `records`; bad ones are skipped with their reason."""
    images, labels, targets, keys, skipped = [], [], [], [], []
    for record in records:
        result = process_record(record, settings)
        if result.skip is not None:
            skipped.append(result.skip)
            continue
        sample = result.sample
        meta = json.loads(sample["json"])
        image_field = "jpg" if "jpg" in sample else "png"
        image = decode_image(sample[image_field], meta["source_id"], settings.max_pixels).image
        small, small_labels = resize_pair(image, segmenter(image, meta), size)
        images.append(small)
        labels.append(small_labels)
        targets.append(task_target(meta, num_classes, multilabel))
        keys.append(meta["key"])
    empty_target = (0, num_classes) if multilabel else (0,)
    return RepaintSet(
        np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        np.stack(labels) if labels else np.zeros((0, size, size), np.uint16),
        np.stack(targets) if targets else np.zeros(empty_target, np.float32 if multilabel else np.int64),
        keys, skipped)
