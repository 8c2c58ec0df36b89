"""Structural validation of a COCO instances JSON, before pycocotools sees it.

pycocotools silently overwrites duplicate ids and accepts dangling references; a shard set built
on such a file would carry wrong boxes with no warning. Every error names the file and the id.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class CocoFormatError(ValueError):
    """A COCO annotation file that is malformed; the message names the file and the record."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_coco_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise CocoFormatError(f"{path}: annotation file not found") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CocoFormatError(
            f"{path}: not valid JSON (truncated or corrupt?) at line {exc.lineno} column {exc.colno}: "
            f"{exc.msg}"
        ) from None
    except UnicodeDecodeError as exc:
        raise CocoFormatError(f"{path}: not UTF-8 text: {exc}") from None
    except RecursionError:
        raise CocoFormatError(f"{path}: JSON nested too deeply to be a COCO file") from None
    validate_coco(data, str(path))
    return data


def _check_rle(rle: dict, image: dict, where: str) -> None:
    """An RLE mask must name its image's size and decode (pycocotools' own decoder) to that size."""
    from pycocotools import mask as mask_utils

    if "counts" not in rle or "size" not in rle:
        raise CocoFormatError(f"{where}: RLE segmentation needs 'counts' and 'size'")
    if rle["size"] != [image["height"], image["width"]]:
        raise CocoFormatError(f"{where}: RLE size {rle['size']!r} is not its image's [height, width] "
                              f"[{image['height']}, {image['width']}]")
    counts = rle["counts"]
    try:
        if isinstance(counts, list):  # uncompressed: run lengths that must cover the image exactly
            valid = all(isinstance(c, int) and c >= 0 for c in counts)
            if not valid or sum(counts) != image["height"] * image["width"]:
                raise ValueError("uncompressed counts must be non-negative integers summing to height x width")
            return
        if not isinstance(counts, str):
            raise ValueError(f"counts must be a list or a compressed string, not {type(counts).__name__}")
        mask = mask_utils.decode({"size": rle["size"], "counts": counts.encode("ascii")})
        if mask.shape[:2] != (image["height"], image["width"]):
            raise ValueError(f"decodes to {mask.shape[:2]}")
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise CocoFormatError(f"{where}: RLE segmentation does not decode: {exc}") from None


def _check_polygons(segmentation: Any, image: dict, where: str) -> None:
    if isinstance(segmentation, dict):
        _check_rle(segmentation, image, where)
        return
    if not isinstance(segmentation, list):
        raise CocoFormatError(f"{where}: segmentation must be a list of polygons or an RLE dict")
    for k, polygon in enumerate(segmentation):
        if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
            raise CocoFormatError(f"{where}: polygon {k} must be a list of numbers")
        if len(polygon) % 2 or len(polygon) < 6:
            raise CocoFormatError(
                f"{where}: polygon {k} has {len(polygon)} coordinates; it needs an even count >= 6"
            )


def _unique_ids(items: list, kind: str, path: str) -> set:
    seen: set = set()
    for item in items:
        if not isinstance(item, dict) or "id" not in item:
            raise CocoFormatError(f"{path}: every entry of '{kind}' needs an 'id'")
        item_id = item["id"]
        if not isinstance(item_id, int) or isinstance(item_id, bool):
            raise CocoFormatError(f"{path}: {kind} id {item_id!r} is not an integer")
        if item_id in seen:
            raise CocoFormatError(f"{path}: duplicate {kind} id {item_id}")
        seen.add(item_id)
    return seen


def validate_coco(data: Any, path: str) -> None:
    """Raise CocoFormatError on the first structural problem of a COCO instances dict."""
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path}: top level must be a JSON object")
    for section in ("images", "annotations", "categories"):
        if not isinstance(data.get(section), list):
            raise CocoFormatError(f"{path}: missing or non-list '{section}' section")
    image_ids = _unique_ids(data["images"], "image", path)
    _unique_ids(data["annotations"], "annotation", path)
    category_ids = _unique_ids(data["categories"], "category", path)
    for category in data["categories"]:
        if not isinstance(category.get("name"), str) or not category["name"].strip():
            raise CocoFormatError(f"{path}: category id {category['id']}: 'name' must be a non-empty string")
    images = {image["id"]: image for image in data["images"]}
    for image in data["images"]:
        where = f"{path}: image id {image['id']}"
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            raise CocoFormatError(f"{where}: missing 'file_name'")
        for dim in ("width", "height"):
            if not isinstance(image.get(dim), int) or image[dim] <= 0:
                raise CocoFormatError(f"{where}: '{dim}' must be a positive integer")
    for ann in data["annotations"]:
        where = f"{path}: annotation id {ann['id']}"
        if ann.get("image_id") not in image_ids:
            raise CocoFormatError(f"{where}: refers to image id {ann.get('image_id')!r}, which is not in 'images'")
        if ann.get("category_id") not in category_ids:
            raise CocoFormatError(
                f"{where}: refers to category id {ann.get('category_id')!r}, which is not in 'categories'"
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise CocoFormatError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise CocoFormatError(f"{where}: bbox has negative width or height: {bbox}")
        if "iscrowd" in ann and (ann["iscrowd"] not in (0, 1) or isinstance(ann["iscrowd"], bool)):
            raise CocoFormatError(f"{where}: iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
        if "area" in ann and (not _is_number(ann["area"]) or ann["area"] < 0):
            raise CocoFormatError(f"{where}: area must be a finite number >= 0, got {ann['area']!r}")
        if "segmentation" in ann:
            _check_polygons(ann["segmentation"], images[ann["image_id"]], where)
