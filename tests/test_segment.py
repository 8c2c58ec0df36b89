"""Segmenters: deterministic label maps, exact 16-bit storage, channels for SPADE."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from pycocotools import mask as mask_utils
from skimage.segmentation import find_boundaries

from manifests import ImageDecodeError
from manifests.imageio import decode_label_map, encode_label_map
from pipeline.records import RecordSettings, process_record
from pipeline.segment import (
    CocoPolygonSegmenter,
    DeepLabSegmenter,
    FelzenszwalbSegmenter,
    label_channels,
    make_segmenter,
    rank_by_area,
)
from pipeline.sources import coco_source, demo_source


def _demo_image(index: int = 3) -> Image.Image:
    data, _ = demo_source(8, 64).records[index].read()
    return Image.open(io.BytesIO(data)).convert("RGB")


def test_rank_by_area_orders_segments_largest_first():
    labels = np.array([[7, 7, 7, 2], [7, 7, 5, 2], [9, 9, 9, 9]])
    ranked = rank_by_area(labels)
    assert ranked.tolist() == [[0, 0, 0, 2], [0, 0, 3, 2], [1, 1, 1, 1]]  # 7 (5 px), 9 (4), 2 (2), 5 (1)


def test_felzenszwalb_is_deterministic_and_follows_the_shapes():
    image = _demo_image()
    a, b = FelzenszwalbSegmenter()(image), FelzenszwalbSegmenter()(image)
    assert a.dtype == np.uint16 and a.shape == (64, 64) and np.array_equal(a, b)
    assert 2 <= a.max() + 1 <= 400
    counts = np.bincount(a.ravel())
    assert (np.diff(counts) <= 0).all()  # ids are area ranks


def test_label_map_round_trips_exactly_as_16_bit_png():
    labels = np.arange(300 * 7, dtype=np.uint16).reshape(30, 70) * 31
    assert np.array_equal(decode_label_map(encode_label_map(labels), "seg.png"), labels)
    with pytest.raises(ImageDecodeError, match="seg.png: not a readable PNG label map"):
        decode_label_map(b"<html>", "seg.png")


def test_label_channels_fold_small_segments_and_mark_boundaries():
    labels = rank_by_area(FelzenszwalbSegmenter(scale=20)(_demo_image()).astype(np.int64))
    channels = label_channels(labels, num_channels=8)
    assert channels.shape == (9, 64, 64)
    assert np.array_equal(channels[:8].sum(0), np.ones((64, 64)))  # exactly one class channel per pixel
    assert np.array_equal(channels[7].astype(bool), labels >= 7)  # "other"
    assert np.array_equal(channels[8].astype(bool), find_boundaries(labels, mode="thick"))


def test_deeplab_from_a_local_weights_file(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                      num_classes=5)
    path = tmp_path / "lraspp.pth"
    torch.save(model.state_dict(), path)
    labels = DeepLabSegmenter(str(path), num_classes=5)(_demo_image())
    assert labels.shape == (64, 64) and labels.dtype == np.uint16 and labels.max() < 5
    with pytest.raises(FileNotFoundError, match="missing.pth: segmenter weights not found"):
        DeepLabSegmenter(str(tmp_path / "missing.pth"))(_demo_image())


def test_coco_polygons_match_pycocotools(coco128):
    annotations, images = coco128
    source = coco_source(annotations, images)
    record = next(r for r in source.records if len(r.coco["annotations"]) >= 3)
    sample = process_record(record, RecordSettings("coco", tuple(source.classes), max_side=None)).sample
    meta = json.loads(sample["json"])
    image = Image.open(io.BytesIO(sample["jpg"]))
    labels = CocoPolygonSegmenter()(image, meta)
    h, w = labels.shape
    for polygons, label in zip(meta["segmentations"], meta["box_labels"], strict=True):
        if polygons:
            mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))).astype(bool)
            assert (labels[mask] > 0).all() and (labels[mask] == label + 1).any()
    assert (labels == 0).any()


def test_segmenter_specs():
    assert isinstance(make_segmenter("fh"), FelzenszwalbSegmenter)
    assert isinstance(make_segmenter("coco"), CocoPolygonSegmenter)
    assert make_segmenter("fh:min_size=50,scale=300").params == {"scale": 300.0, "sigma": 0.8, "min_size": 50}
    with pytest.raises(ValueError, match=r"expected fh\[:scale=S,sigma=G,min_size=M\], deeplab:WEIGHTS, coco or demo"):
        make_segmenter("slic")


def test_demo_segmenter_gives_the_demo_shapes_at_the_stored_size():
    source = demo_source(6, 64)
    segmenter = make_segmenter("demo")
    for record in source.records:
        sample = process_record(record, RecordSettings("demo", tuple(source.classes), max_side=48)).sample
        meta = json.loads(sample["json"])
        image = Image.open(io.BytesIO(sample["png"])).convert("RGB")
        layout = segmenter(image, meta)
        assert layout.shape == (48, 48) and layout.dtype == np.uint16  # resized with --max-side
        assert set(np.unique(layout)) == set(range(len(meta["boxes"]) + 1))  # background + each object
        full = segmenter(Image.new("RGB", (64, 64)), {**meta, "source_width": 64})
        x, y, w, h = (round(v * 64 / 48) for v in meta["boxes"][0])
        ys, xs = np.nonzero(full == 1)  # the first object, unless a later one covers part of it
        assert x - 1 <= xs.min() and xs.max() <= x + w and y - 1 <= ys.min() and ys.max() <= y + h
    with pytest.raises(ValueError, match="img/1.jpg: the demo segmenter only knows demo images"):
        segmenter(Image.new("RGB", (8, 8)), {"source_id": "img/1.jpg"})
