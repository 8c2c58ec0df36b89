"""Per-record work: read -> decode -> (downscale) -> [segment -> repaint N] -> encode -> sample.

Plain functions: tests call them without Ray. A bad record never raises out of
`process_record`; it comes back as a skip with the reason, so one file cannot take a shard down.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

from manifests import (
    FIELD_CLS,
    FIELD_JSON,
    ImageDecodeError,
    check_field,
    decode_image,
    encode_image,
    make_key,
)
from manifests.imageio import DEFAULT_MAX_PIXELS

from .sources import Record

# Repainting hook (pipeline/repaint/paint.py): (image, key, metadata) -> {field: bytes}, e.g. {"rp0.jpg": ...}.
Repainter = Callable[[Image.Image, str, dict], dict[str, bytes]]


@dataclass(frozen=True)
class RecordSettings:
    key_prefix: str
    class_names: tuple[str, ...]
    max_side: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class RecordResult:
    sample: dict[str, Any] | None  # {"__key__": str, field: bytes}, for tarwriter.ShardTarWriter
    skip: dict[str, Any] | None  # {"index", "source_id", "reason"}
    notes: list[str]
    boxes: int = 0


def _resize(image: Image.Image, max_side: int | None) -> tuple[Image.Image, float, float]:
    w, h = image.size
    if not max_side or max(w, h) <= max_side:
        return image, 1.0, 1.0
    s = max_side / max(w, h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    return image.resize((nw, nh), Image.Resampling.BICUBIC), nw / w, nh / h


def _scale_box(box: list[float], sx: float, sy: float) -> list[float]:
    x, y, w, h = box
    return [x * sx, y * sy, w * sx, h * sy]


def _scale_segmentation(seg: Any, sx: float, sy: float) -> Any:
    if not isinstance(seg, list) or (sx == 1.0 and sy == 1.0):
        return seg  # RLE masks are not rescaled; their 'size' still names the source size
    return [[v * (sx if i % 2 == 0 else sy) for i, v in enumerate(poly)] for poly in seg]


def _annotations(record: Record, extra: dict, sx: float, sy: float, meta: dict) -> int:
    """Fill box fields of `meta`, scaled to the stored image; return the number of boxes."""
    if record.coco is not None:
        anns = record.coco["annotations"]
        meta["coco_image_id"] = record.coco["image_id"]
        meta["boxes"] = [_scale_box(a["bbox"], sx, sy) for a in anns]
        meta["box_labels"] = [a["label"] for a in anns]
        meta["category_ids"] = [a["category_id"] for a in anns]
        meta["annotation_ids"] = [a["id"] for a in anns]
        meta["iscrowd"] = [a["iscrowd"] for a in anns]
        meta["areas"] = [None if a["area"] is None else a["area"] * sx * sy for a in anns]
        meta["segmentations"] = [_scale_segmentation(a["segmentation"], sx, sy) for a in anns]
        return len(anns)
    if "boxes" in extra:
        meta["boxes"] = [_scale_box(b, sx, sy) for b in extra["boxes"]]
        meta["box_labels"] = extra["box_labels"]
        return len(extra["boxes"])
    return 0


@functools.lru_cache(maxsize=64)
def _check_fields(fields: tuple[str, ...]) -> None:
    """Every field against the contract's allowlist; cached, as a record's field set repeats."""
    for field_name in fields:
        if field_name != "__key__":
            check_field(field_name)


@dataclass
class Prepared:
    """A decoded record whose sample waits for its repainted fields (`finish_record`)."""

    sample: dict[str, Any]
    meta: dict[str, Any]
    image: Image.Image
    notes: list[str]
    boxes: int

    @property
    def key(self) -> str:
        return self.sample["__key__"]


def process_record(record: Record, settings: RecordSettings, repaint: Repainter | None = None) -> RecordResult:
    prepared = prepare_record(record, settings)
    if isinstance(prepared, RecordResult):
        return prepared
    return finish_record(prepared, repaint(prepared.image, prepared.key, prepared.meta) if repaint else {})


def process_records(records: list[Record], settings: RecordSettings, repaint: Repainter | None = None,
                    paint_batch: int = 1) -> Iterator[RecordResult]:
    """`process_record` over `records` in order, handing the repainter `paint_batch` images at a time
    when it can paint a batch (`repaint.many`, one forward for B x N variants: what keeps a GPU busy)."""
    many = getattr(repaint, "many", None)
    if many is None or paint_batch <= 1:
        yield from (process_record(r, settings, repaint) for r in records)
        return
    for start in range(0, len(records), paint_batch):
        prepared = [prepare_record(r, settings) for r in records[start:start + paint_batch]]
        waiting = [p for p in prepared if isinstance(p, Prepared)]
        fields = iter(many([(p.image, p.key, p.meta) for p in waiting]) if waiting else [])
        yield from (p if isinstance(p, RecordResult) else finish_record(p, next(fields)) for p in prepared)


def finish_record(prepared: Prepared, repainted: dict[str, bytes]) -> RecordResult:
    sample, meta = prepared.sample, prepared.meta
    sample.update(repainted)
    meta["fields"] = sorted([*(k for k in sample if k != "__key__"), FIELD_JSON])
    sample[FIELD_JSON] = json.dumps(meta, sort_keys=True, ensure_ascii=True).encode()
    _check_fields(tuple(sample))
    return RecordResult(sample, None, prepared.notes, prepared.boxes)


def prepare_record(record: Record, settings: RecordSettings) -> Prepared | RecordResult:
    """Read, decode, downscale, encode; a bad record comes back as a RecordResult with its skip."""
    skip = {"index": record.index, "source_id": record.source_id}
    if record.skip_reason:
        return RecordResult(None, {**skip, "reason": record.skip_reason}, [])
    try:
        data, extra = record.read()
        decoded = decode_image(data, record.source_id, settings.max_pixels)
    except FileNotFoundError:
        return RecordResult(None, {**skip, "reason": "file not found"}, [])
    except ImageDecodeError as exc:
        return RecordResult(None, {**skip, "reason": exc.reason}, [])
    except Exception as exc:  # noqa: BLE001 - any failure of one record becomes a recorded skip
        return RecordResult(None, {**skip, "reason": f"{type(exc).__name__}: {exc}"}, [])

    image = decoded.image
    if record.coco is not None and image.size != (record.coco["width"], record.coco["height"]):
        declared = f"{record.coco['width']}x{record.coco['height']}"
        reason = f"image is {image.width}x{image.height} but the annotations declare {declared}"
        return RecordResult(None, {**skip, "reason": reason}, decoded.notes)
    source_size = image.size
    image, sx, sy = _resize(image, settings.max_side)
    key = make_key(settings.key_prefix, record.index)

    # Keep the file's own bytes when the pixels are exactly what it holds: no re-encoding loss.
    passthrough = decoded.unchanged and image.size == source_size and decoded.format in ("JPEG", "PNG")
    ext = "jpg" if decoded.format == "JPEG" else "png"
    image_bytes = data if passthrough else encode_image(image, ext)

    label = extra.get("label", record.label)
    meta: dict[str, Any] = {
        "key": key, "index": record.index, "source_id": record.source_id,
        "width": image.width, "height": image.height,
        "source_width": source_size[0], "source_height": source_size[1], "scale": [sx, sy],
        "stored": "source bytes" if passthrough else f"re-encoded {ext}",
        "decode_notes": decoded.notes + record.notes,
    }
    if label is not None:
        meta["label"] = label
        meta["class_name"] = settings.class_names[label]
    n_boxes = _annotations(record, extra, sx, sy, meta)

    sample: dict[str, Any] = {"__key__": key, ext: image_bytes}
    if label is not None:
        sample[FIELD_CLS] = str(label).encode()
    return Prepared(sample, meta, image, decoded.notes + record.notes, n_boxes)
