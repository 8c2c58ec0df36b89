"""COCO validation: each structural error names the file and the offending id."""

from __future__ import annotations

import copy
import json

import pytest
from pycocotools.coco import COCO

from pipeline.coco_check import CocoFormatError, load_coco_json

VALID = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10},
               {"id": 2, "file_name": "b.jpg", "width": 20, "height": 10}],
    "annotations": [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4],
                     "segmentation": [[1, 2, 4, 2, 4, 6]], "iscrowd": 0, "area": 12}],
    "categories": [{"id": 3, "name": "cat"}],
}


def _broken(mutate):
    data = copy.deepcopy(VALID)
    mutate(data)
    return data


CASES = {
    "duplicate image id": (_broken(lambda d: d["images"].append(dict(d["images"][0]))),
                           "duplicate image id 1"),
    "duplicate annotation id": (_broken(lambda d: d["annotations"].append(dict(d["annotations"][0]))),
                                "duplicate annotation id 10"),
    "missing image": (_broken(lambda d: d["annotations"][0].update(image_id=99)),
                      "annotation id 10: refers to image id 99"),
    "unknown category": (_broken(lambda d: d["annotations"][0].update(category_id=7)),
                         "annotation id 10: refers to category id 7"),
    "negative box": (_broken(lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4])),
                     "annotation id 10: bbox has negative width or height"),
    "odd polygon": (_broken(lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5, 6, 7]])),
                    "annotation id 10: polygon 0 has 7 coordinates"),
    "short polygon": (_broken(lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4]])),
                      "annotation id 10: polygon 0 has 4 coordinates"),
    "bad image size": (_broken(lambda d: d["images"][1].update(width=0)),
                       "image id 2: 'width' must be a positive integer"),
    "iscrowd 2": (_broken(lambda d: d["annotations"][0].update(iscrowd=2)), "annotation id 10: iscrowd must be 0 or 1"),
    "iscrowd true": (_broken(lambda d: d["annotations"][0].update(iscrowd=True)), "iscrowd must be 0 or 1, got True"),
    "nameless category": (_broken(lambda d: d["categories"][0].pop("name")),
                          "category id 3: 'name' must be a non-empty string"),
    "area string": (_broken(lambda d: d["annotations"][0].update(area="12")),
                    "annotation id 10: area must be a finite number >= 0, got '12'"),
    "area NaN": (_broken(lambda d: d["annotations"][0].update(area=float("nan"))), "area must be a finite number"),
    "area negative": (_broken(lambda d: d["annotations"][0].update(area=-1)), "area must be a finite number"),
    "bbox NaN": (_broken(lambda d: d["annotations"][0].update(bbox=[1, 2, float("nan"), 4])),
                 "bbox must be 4 finite numbers"),
    "RLE garbage": (_broken(lambda d: d["annotations"][0].update(
        segmentation={"size": [10, 20], "counts": "\u00ff\u00fe!!"})), "annotation id 10: RLE segmentation does not"),
    "RLE short counts": (_broken(lambda d: d["annotations"][0].update(
        segmentation={"size": [10, 20], "counts": [5, 5]})), "RLE segmentation does not decode: uncompressed"),
    "RLE wrong size": (_broken(lambda d: d["annotations"][0].update(
        segmentation={"size": [4, 4], "counts": [16]})), "RLE size [4, 4] is not its image's [height, width]"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_coco_names_file_and_id(tmp_path, case):
    data, message = CASES[case]
    path = tmp_path / "instances_bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CocoFormatError) as info:
        load_coco_json(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_truncated_json_names_file_and_position(tmp_path):
    path = tmp_path / "instances_cut.json"
    path.write_text(json.dumps(VALID)[:57])
    with pytest.raises(CocoFormatError, match=r"not valid JSON \(truncated or corrupt\?\) at line 1"):
        load_coco_json(path)


def test_valid_file_passes_and_matches_pycocotools(tmp_path):
    path = tmp_path / "instances_ok.json"
    path.write_text(json.dumps(VALID))
    assert load_coco_json(path) == VALID
    assert COCO(str(path)).getAnnIds(imgIds=[1]) == [10]


def test_coco128_is_valid(coco128):
    annotations, _ = coco128
    data = load_coco_json(annotations)
    assert len(data["images"]) == 128 and len(data["annotations"]) == 929


def test_deep_json_is_refused_with_a_message(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CocoFormatError, match="deep.json: JSON nested too deeply"):
        load_coco_json(path)


def test_a_valid_rle_passes(tmp_path):
    import numpy as np
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.ones((10, 20), np.uint8)))
    data = copy.deepcopy(VALID)
    data["annotations"][0]["segmentation"] = {"size": [10, 20], "counts": rle["counts"].decode()}
    path = tmp_path / "rle.json"
    path.write_text(json.dumps(data))
    load_coco_json(path)


def test_boxes_reaching_past_the_image_are_clipped_or_dropped_and_counted(tmp_path):
    from pipeline.sources import coco_source

    data = copy.deepcopy(VALID)
    data["annotations"] = [
        {"id": 10, "image_id": 1, "category_id": 3, "bbox": [15, 2, 10, 4]},  # past the right edge: clipped
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [30, 2, 5, 4]},  # wholly outside: dropped
        {"id": 12, "image_id": 1, "category_id": 3, "bbox": [3, 3, 0, 4]},  # zero area: dropped
        {"id": 13, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]},  # kept as is
    ]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    (tmp_path / "images").mkdir()
    record = coco_source(path, tmp_path / "images").records[0]
    assert [(a["id"], a["bbox"]) for a in record.coco["annotations"]] == [(10, [15, 2, 5, 4]), (13, [1, 1, 2, 2])]
    assert sorted(record.notes) == ["COCO box clipped to its image", "COCO box dropped: no area inside its image",
                                    "COCO box dropped: no area inside its image"]
