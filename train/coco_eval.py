"""COCO bbox evaluation with pycocotools, from a shard set's own ground truth.

Detections come out of effdet in the stored image's pixels (effdet multiplies by `img_scale`);
dividing by the shard's `scale` takes them to the original image, where the COCO annotations
live. Every rank evaluates its share; rank 0 runs COCOeval on everything and shares the 12 stats.
"""

from __future__ import annotations

import contextlib
import io

import torch
import torch.distributed as dist_api
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .distributed import DistInfo
from .engine import to_device

MAX_GT = 300
STAT_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
              "mar1", "mar10", "mar100", "mar_small", "mar_medium", "mar_large")


def to_coco_results(detections: torch.Tensor, target: dict, categories: list[dict]) -> list[dict]:
    """effdet detections [B, D, 6] (x1, y1, x2, y2, score, class 1-based) -> COCO result dicts."""
    results = []
    for dets, image_id, (sx, sy) in zip(detections.cpu().double(), target["image_id"].tolist(),
                                        target["src_scale"].tolist(), strict=True):
        for x1, y1, x2, y2, score, cls in dets.tolist():
            if score <= 0 or cls < 1:  # effdet pads the per-image list with zeros
                continue
            results.append({"image_id": image_id, "category_id": categories[int(cls) - 1]["id"], "score": score,
                            "bbox": [x1 / sx, y1 / sy, (x2 - x1) / sx, (y2 - y1) / sy]})
    return results


def ground_truth(target: dict) -> tuple[list[dict], list[dict]]:
    """(images, annotations) in COCO form from the evaluation targets of one batch."""
    images, annotations = [], []
    for i, image_id in enumerate(target["image_id"].tolist()):
        width, height = target["src_size"][i].tolist()
        images.append({"id": image_id, "width": width, "height": height})
        for j in range(int((target["gt_cats"][i] >= 0).sum())):
            annotations.append({"id": int(target["gt_ids"][i, j]), "image_id": image_id,
                                "category_id": int(target["gt_cats"][i, j]), "bbox": target["gt_boxes"][i, j].tolist(),
                                "area": float(target["gt_area"][i, j]), "iscrowd": int(target["gt_crowd"][i, j])})
    return images, annotations


def run_cocoeval(images: list[dict], annotations: list[dict], results: list[dict],
                 categories: list[dict]) -> dict[str, float]:
    gt = COCO()
    seen_ids, unique = set(), []
    for ann in annotations:  # ids must be unique for COCOeval; the shards' may repeat across sets
        ann = dict(ann, id=len(unique) + 1) if ann["id"] in seen_ids or ann["id"] < 0 else ann
        seen_ids.add(ann["id"])
        unique.append(ann)
    gt.dataset = {"images": images, "annotations": unique, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not results:
            return dict.fromkeys(STAT_NAMES, 0.0)
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats, strict=True)}


@torch.no_grad()
def coco_evaluate(bench: torch.nn.Module, loader, dist: DistInfo, categories: list[dict]) -> dict:
    """Run an effdet DetBenchTrain in eval mode over `loader`; the 12 COCOeval stats, on every rank."""
    bench.eval()
    images, annotations, results, bad = [], [], [], 0
    for x, target, skipped in loader:
        device_target = to_device({k: target[k] for k in ("bbox", "cls", "img_scale", "img_size")}, dist.device)
        detections = bench(x.to(dist.device), device_target)["detections"]
        results += to_coco_results(detections, target, categories)
        batch_images, batch_annotations = ground_truth(target)
        images += batch_images
        annotations += batch_annotations
        bad += int(skipped.sum())
    parts = [(images, annotations, results, bad)]
    if dist.world > 1:
        parts = [None] * dist.world
        dist_api.all_gather_object(parts, (images, annotations, results, bad))
    stats = [None]
    if dist.is_main:
        everything = [sum((p[k] for p in parts), []) for k in range(3)]
        stats = [run_cocoeval(*everything, categories)]
        stats[0]["val_images"] = len(everything[0])
        stats[0]["val_bad"] = sum(p[3] for p in parts)
    if dist.world > 1:
        dist_api.broadcast_object_list(stats, src=0)
    return stats[0]
