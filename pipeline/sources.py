"""Sources: ImageFolder (ImageNet layout), COCO instances + images, and the built-in demo.

A source lists lightweight `Record`s in a fixed order; the bytes of each image are read only by
the worker that shards it. The order (and so every key) depends only on the source's content.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .coco_check import load_coco_json
from .demo_data import DEMO_CLASSES, render_demo

# torchvision.datasets.folder.IMG_EXTENSIONS, so a folder shards exactly what ImageFolder reads.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class SourceError(ValueError):
    """A source spec or source folder that cannot be used; names the path and the problem."""


def display_name(raw: bytes) -> str:
    """A printable, JSON-safe form of a file name; undecodable bytes become \\xNN escapes."""
    return raw.decode("utf-8", errors="backslashreplace")


@dataclass
class Record:
    index: int
    source_id: str  # display form of the relative path (or "demo/<index>")
    path: bytes | None = None  # absolute path as bytes: survives non-UTF-8 names
    label: int | None = None
    class_name: str | None = None
    notes: list[str] = field(default_factory=list)
    skip_reason: str | None = None  # known-bad before reading (e.g. an unsupported extension)
    coco: dict[str, Any] | None = None  # image id, declared size, annotations
    demo: tuple[int, int] | None = None  # (dataset seed, image size)

    def read(self) -> tuple[bytes, dict[str, Any]]:
        """The image file's bytes, plus labels that only exist once the image does (demo)."""
        if self.demo is not None:
            image, label, boxes, box_labels = render_demo(self.demo[0], self.index, self.demo[1])
            buf = io.BytesIO()
            image.save(buf, format="PNG", compress_level=6)
            return buf.getvalue(), {"label": label, "boxes": boxes, "box_labels": box_labels}
        assert self.path is not None
        return read_regular_file(self.path), {}


@dataclass
class Source:
    kind: str
    records: list[Record]
    classes: list[str]
    provenance: dict[str, Any]
    categories: list[dict] | None = None  # COCO categories (id, name, supercategory)


class NotARegularFile(OSError):
    """A FIFO, device or folder where an image file was listed: never read (a FIFO would block)."""


def read_regular_file(path: bytes) -> bytes:
    """The bytes of a regular file; opened non-blocking and checked before reading, so a FIFO put
    where an image was cannot hang the job."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotARegularFile(f"{os.fsdecode(path)}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _walk(root: bytes, top: bytes, visited: set[tuple[int, int]]) -> list[tuple[bytes, bytes, str | None]]:
    """(folder, file name, skip reason or None) under `top`, in `sorted(os.walk(top))` order; links
    are followed only inside `root`.

    A folder is entered once (by device and inode), so links that loop or repeat a folder list
    nothing twice; a link that leaves `root`, a broken link and a FIFO/socket/device are listed with
    the reason they are skipped, and never opened.
    """
    real_root = os.path.realpath(root)
    folders: list[tuple[bytes, list[tuple[bytes, bytes, str | None]]]] = []
    pending = [top]
    while pending:
        folder = pending.pop()
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in visited:
            continue
        visited.add((info.st_dev, info.st_ino))
        files: list[tuple[bytes, bytes, str | None]] = []
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_symlink() and os.path.commonpath([real_root, os.path.realpath(entry.path)]) != real_root:
                    files.append((folder, entry.name, "a link to outside the source folder (not followed)"))
                elif entry.is_dir():
                    pending.append(entry.path)
                elif entry.is_file():
                    files.append((folder, entry.name, None))
                else:
                    reason = "a broken link" if entry.is_symlink() else "not a regular file (a FIFO, socket or device)"
                    files.append((folder, entry.name, reason))
        folders.append((folder, files))
    return [item for _, files in sorted(folders, key=lambda f: f[0]) for item in files]


def _hash_lines(lines: list[bytes]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line + b"\n")
    return digest.hexdigest()


def image_folder_source(root: str | Path) -> Source:
    root_b = os.fsencode(os.path.abspath(root))
    if not os.path.isdir(root_b):
        raise SourceError(f"{root}: not a directory (expected root/<class>/<image>)")
    class_dirs = sorted(e.name for e in os.scandir(root_b) if e.is_dir())
    for class_b in class_dirs:
        if not _inside(root_b, os.path.join(root_b, class_b)):
            raise SourceError(f"{root}: class folder {display_name(class_b)!r} is a link to outside the source "
                              "folder (refused: the job reads only under the root it is given)")
    if not class_dirs:
        raise SourceError(f"{root}: no class folders found (expected root/<class>/<image>)")
    records: list[Record] = []
    listing: list[bytes] = []
    visited: set[tuple[int, int]] = set()
    for label, class_b in enumerate(class_dirs):
        class_dir = os.path.join(root_b, class_b)
        for dirpath, name, refused in _walk(root_b, class_dir, visited):
            full = os.path.join(dirpath, name)
            rel = full[len(root_b) + 1:]  # os.path.relpath is ~20 us a call: too slow here
            listing.append(rel)
            record = Record(len(records), display_name(rel), path=full, label=label,
                            class_name=display_name(class_b))
            if display_name(rel) != os.fsdecode(rel):
                record.notes.append("file name is not valid UTF-8; shown with \\x escapes")
            if refused:
                record.skip_reason, record.path = refused, None
            elif not os.fsdecode(name).lower().endswith(IMAGE_EXTENSIONS):
                record.skip_reason = "not an image file extension (torchvision's IMG_EXTENSIONS)"
            records.append(record)
    provenance = {"kind": "imagefolder", "root": display_name(root_b), "files": len(listing),
                  "file_list_sha256": _hash_lines(listing)}
    return Source("imagefolder", records, [display_name(c) for c in class_dirs], provenance)


def _inside(root: str | Path, path: bytes) -> bool:
    """Does `path`, links resolved, lie under `root` (also resolved)?"""
    real_root = os.path.realpath(os.fsencode(os.path.abspath(root)))
    return os.path.commonpath([real_root, os.path.realpath(path)]) == real_root


def _clipped_box(bbox: list[float], width: int, height: int) -> tuple[list[float] | None, str | None]:
    """A documented repair (counted in the manifest's conversions): a box reaching past its image is
    clipped to it; one with no area inside the image is dropped, as a detector could not learn it."""
    x, y, w, h = bbox
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        return None, "dropped: no area inside its image"
    if (x0, y0, x1, y1) == (x, y, x + w, y + h):
        return bbox, None
    return [x0, y0, x1 - x0, y1 - y0], "clipped to its image"


def coco_source(annotations: str | Path, images_dir: str | Path) -> Source:
    data = load_coco_json(annotations)
    if not os.path.isdir(images_dir):
        raise SourceError(f"{images_dir}: COCO image folder not found")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    cat_index = {c["id"]: i for i, c in enumerate(categories)}
    by_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        by_image[ann["image_id"]].append(ann)
    records = []
    for image in sorted(data["images"], key=lambda i: i["id"]):
        anns = by_image[image["id"]]
        coco = {
            "image_id": image["id"], "file_name": image["file_name"],
            "width": image["width"], "height": image["height"],
            "annotations": [],
        }
        notes = []
        for a in anns:
            bbox, repair = _clipped_box(a["bbox"], image["width"], image["height"])
            if repair:
                notes.append(f"COCO box {repair}")
            if bbox is None:
                continue
            coco["annotations"].append(
                {"id": a["id"], "bbox": bbox, "category_id": a["category_id"], "label": cat_index[a["category_id"]],
                 "iscrowd": int(a.get("iscrowd", 0)), "area": a.get("area"), "segmentation": a.get("segmentation")})
        path = os.fsencode(os.path.join(os.path.abspath(images_dir), image["file_name"]))
        record = Record(len(records), image["file_name"], path=path, coco=coco, notes=notes)
        if not _inside(images_dir, path):
            record.skip_reason = f"file_name {image['file_name']!r} resolves outside the images folder (not read)"
            record.path = None
        records.append(record)
    provenance = {
        "kind": "coco", "annotations": os.path.abspath(annotations),
        "root": os.path.abspath(images_dir),
        "annotations_sha256": hashlib.sha256(Path(annotations).read_bytes()).hexdigest(),
        "images": len(records),
        "images_without_annotations": sum(1 for r in records if not r.coco["annotations"]),
    }
    names = [c["name"] for c in categories]
    cats = [{"id": c["id"], "name": c["name"], "supercategory": c.get("supercategory", "")}
            for c in categories]
    return Source("coco", records, names, provenance, categories=cats)


def demo_source(count: int = 512, size: int = 96, dataset_seed: int = 0) -> Source:
    if count <= 0 or size < 32:
        raise SourceError(f"demo: needs count > 0 and size >= 32, got count={count}, size={size}")
    records = []
    for index in range(count):
        records.append(Record(index, f"demo/{index}", demo=(dataset_seed, size)))
    provenance = {"kind": "demo", "root": "", "count": count, "size": size,
                  "dataset_seed": dataset_seed}
    return Source("demo", records, list(DEMO_CLASSES), provenance)


def open_source(spec: str) -> Source:
    """Parse `imagefolder:DIR`, `coco:ANNOTATIONS_JSON:IMAGES_DIR` or `demo[:COUNT[:SIZE]]`."""
    kind, _, rest = spec.partition(":")
    if kind == "imagefolder" and rest:
        return image_folder_source(rest)
    if kind == "coco":
        ann, sep, images = rest.rpartition(":")
        if not sep or not ann or not images:
            raise SourceError(f"--source {spec!r}: expected coco:ANNOTATIONS_JSON:IMAGES_DIR")
        return coco_source(ann, images)
    if kind == "demo":
        parts = rest.split(":") if rest else []
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise SourceError(f"--source {spec!r}: expected demo[:COUNT[:SIZE]]") from None
        if len(numbers) > 2:
            raise SourceError(f"--source {spec!r}: expected demo[:COUNT[:SIZE]]")
        return demo_source(*numbers)
    raise SourceError(
        f"--source {spec!r}: expected imagefolder:DIR, coco:ANNOTATIONS_JSON:IMAGES_DIR or demo"
    )
