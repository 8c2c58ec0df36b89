"""The detection task: EfficientDet (effdet) on COCO shards, boxes reused by every variant.

Inputs are resized to fit `--img-size` (aspect kept) and padded at the bottom/right with the mean
colour, as effdet's own loader does; boxes go in as yxyx pixels of that input, classes 1-based,
padded with -1. A horizontal flip (training) moves the boxes with the image. For evaluation the
target also carries each image's ground truth in original COCO coordinates, so a shard set alone
is enough for pycocotools.
"""

from __future__ import annotations

import json
import random

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader

from .coco_eval import MAX_GT, STAT_NAMES, coco_evaluate
from .distributed import DistInfo
from .stream import EvalStream, ShardSet, open_shard_set, read_image, seed_augmentation

FILL = tuple(round(255 * m) for m in IMAGENET_DEFAULT_MEAN)


def categories_of(shard_set: ShardSet) -> list[dict]:
    """COCO categories of the set; a non-COCO set with boxes (the demo) gets ids 1..N."""
    if shard_set.categories:
        return shard_set.categories
    return [{"id": i + 1, "name": name} for i, name in enumerate(shard_set.classes)]


class DetectionDecoder:
    """sample -> (input tensor, target dict of tensors) for effdet's DetBenchTrain."""

    def __init__(self, size: int, train: bool, max_boxes: int = 100):
        self.size, self.train, self.max_boxes = size, train, max_boxes
        self.mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)

    def __call__(self, sample: dict, image_field: str, aug_seed: int | None) -> tuple:
        if "json" not in sample:
            raise ValueError("no 'json' metadata: boxes are needed for detection")
        meta = json.loads(sample["json"])
        if "boxes" not in meta:
            raise ValueError("the metadata holds no 'boxes': not a detection shard set")
        image = read_image(sample, image_field)
        if aug_seed is not None:
            seed_augmentation(aug_seed)
        w, h = image.size
        scale = self.size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BILINEAR)
        boxes = np.asarray(meta["boxes"], np.float64).reshape(-1, 4)
        xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1) * scale
        if self.train and random.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            xyxy[:, [0, 2]] = nw - xyxy[:, [2, 0]]
        canvas = Image.new("RGB", (self.size, self.size), FILL)
        canvas.paste(image, (0, 0))
        tensor = torch.from_numpy(np.asarray(canvas, np.float32) / 255.0).permute(2, 0, 1)
        target = self._target(meta, xyxy, scale, nw, nh)
        return (tensor - self.mean) / self.std, target

    def _target(self, meta: dict, xyxy: np.ndarray, scale: float, nw: int, nh: int) -> dict:
        labels = np.asarray(meta.get("box_labels", []), np.int64) + 1
        crowd = np.asarray(meta.get("iscrowd") or [0] * len(xyxy), bool)
        xyxy = xyxy.copy()
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, nw)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, nh)
        keep = ~crowd & (xyxy[:, 2] - xyxy[:, 0] >= 1) & (xyxy[:, 3] - xyxy[:, 1] >= 1)
        kept = xyxy[keep][: self.max_boxes]
        bbox = torch.full((self.max_boxes, 4), -1.0)
        cls = torch.full((self.max_boxes,), -1.0)
        bbox[: len(kept)] = torch.from_numpy(kept[:, [1, 0, 3, 2]]).float()  # yxyx, as effdet wants
        cls[: len(kept)] = torch.from_numpy(labels[keep][: self.max_boxes]).float()
        sx, sy = meta.get("scale", [1.0, 1.0])
        target = {"bbox": bbox, "cls": cls, "img_scale": torch.tensor(1.0 / scale),
                  "img_size": torch.tensor([meta["width"], meta["height"]], dtype=torch.float32),
                  "image_id": torch.tensor(int(meta.get("coco_image_id", meta["index"]))),
                  "src_scale": torch.tensor([sx, sy], dtype=torch.float64)}
        if not self.train:
            target.update(_ground_truth(meta, sx, sy))
        return target


def _ground_truth(meta: dict, sx: float, sy: float) -> dict:
    """Every box (crowd included) in original coordinates, padded to MAX_GT, for COCOeval."""
    boxes = np.asarray(meta["boxes"], np.float64).reshape(-1, 4) / [sx, sy, sx, sy]
    n = len(boxes)
    if n > MAX_GT:
        raise ValueError(f"{n} ground-truth boxes in one image; evaluation keeps at most {MAX_GT}")
    cats = meta.get("category_ids") or [label + 1 for label in meta.get("box_labels", [])]
    # Stored areas were scaled with the image; boxes without one (the demo) use w * h.
    areas = np.asarray([a / (sx * sy) if a is not None else w * h for a, (_, _, w, h) in
                        zip(meta.get("areas") or [None] * n, boxes, strict=True)], np.float64)
    out = {"gt_boxes": torch.zeros(MAX_GT, 4, dtype=torch.float64), "gt_cats": torch.full((MAX_GT,), -1),
           "gt_crowd": torch.zeros(MAX_GT, dtype=torch.int64), "gt_area": torch.zeros(MAX_GT, dtype=torch.float64),
           "gt_ids": torch.full((MAX_GT,), -1),
           "src_size": torch.tensor([meta["source_width"], meta["source_height"]])}
    out["gt_boxes"][:n] = torch.from_numpy(boxes)
    out["gt_cats"][:n] = torch.tensor(cats, dtype=torch.int64)
    out["gt_crowd"][:n] = torch.tensor(meta.get("iscrowd") or [0] * n, dtype=torch.int64)
    out["gt_area"][:n] = torch.from_numpy(areas)
    out["gt_ids"][:n] = torch.tensor(meta.get("annotation_ids") or list(range(n)), dtype=torch.int64)
    return out


class DetectionTask:
    name = "detection"
    metric_names = STAT_NAMES
    summary_metrics = STAT_NAMES + ("val_images",)

    def __init__(self) -> None:
        self.categories: list[dict] = []

    def labels(self, shard_set: ShardSet) -> list[str]:
        self.categories = categories_of(shard_set)
        return [c["name"] for c in self.categories]

    def build_model(self, args, num_classes: int) -> torch.nn.Module:
        import effdet

        return effdet.create_model(args.model, bench_task="train", num_classes=num_classes, pretrained=False,
                                   pretrained_backbone=False, image_size=(args.img_size, args.img_size),
                                   bench_labeler=True)

    def train_decoder(self, args, labels: list[str] | None = None) -> DetectionDecoder:
        return DetectionDecoder(args.img_size, train=True, max_boxes=args.max_boxes)

    def phase_parts(self, args, num_classes: int) -> dict:
        return {"loss_fn": _bench_loss}

    def val_loader(self, args, dist: DistInfo, labels: list[str]) -> DataLoader | None:
        if not args.val:
            return None
        val_set = open_shard_set(args.val)
        val_names = [c["name"] for c in categories_of(val_set)]
        if labels and val_names != labels:
            raise ValueError(f"{args.val}: categories {val_names} differ from the model's {labels}")
        self.categories = categories_of(val_set)
        decoder = DetectionDecoder(args.img_size, train=False, max_boxes=args.max_boxes)
        return DataLoader(EvalStream(val_set, decoder, dist.rank, dist.world, args.max_bad),
                          batch_size=args.batch_size, num_workers=args.workers)

    def shifted_val_loaders(self, args, dist: DistInfo, labels: list[str]) -> dict[str, DataLoader]:
        return {}  # --val-shift is a classification flag

    def evaluate(self, model: torch.nn.Module, loader, dist: DistInfo, labels: list[str]) -> dict:
        return coco_evaluate(model, loader, dist, self.categories)


def _bench_loss(model: torch.nn.Module, x: torch.Tensor, target: dict) -> torch.Tensor:
    return model(x, {"bbox": target["bbox"], "cls": target["cls"]})["loss"]
