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
