"""The detection trainer: boxes through shards and resize/flip, COCO evaluation, torchrun on gloo."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from pycocotools.coco import COCO

from manifests import write_manifest
from pipeline.assemble import build_manifest
from pipeline.job_config import GenerateConfig
from pipeline.records import RecordSettings
from pipeline.shards import write_shard_set
from pipeline.sources import coco_source
from train.coco_eval import ground_truth, run_cocoeval, to_coco_results
from train.config import parse_args
from train.detection import DetectionDecoder, categories_of
from train.stream import open_shard_set

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def coco_shards(coco128, tmp_path_factory) -> Path:
    """The first 24 COCO128 images as shards stored at max side 200 (so boxes are rescaled)."""
    annotations, images = coco128
    out = tmp_path_factory.mktemp("coco_shards")
    source = coco_source(annotations, images)
    source.records = source.records[:24]
    settings = RecordSettings(key_prefix="coco", class_names=tuple(source.classes), max_side=200)
    done = write_shard_set(source, out, 8, settings)
    cfg = GenerateConfig(source=f"coco:{annotations}:{images}", out=str(out), samples_per_shard=8, max_side=200,
                         variants=0)
    write_manifest(out, build_manifest(cfg, source, 24, done))
    return out


def _samples(root: Path) -> list[dict]:
    return list(wds.WebDataset(sorted(str(p) for p in root.glob("shard-*.tar")), shardshuffle=False))


def test_boxes_survive_shards_and_resize_exactly(coco_shards, coco128):
    coco = COCO(str(coco128[0]))
    decoder = DetectionDecoder(256, train=False)
    checked = 0
    for sample in _samples(coco_shards):
        image, target = decoder(sample, "jpg", None)
        assert image.shape == (3, 256, 256)
        image_id = int(target["image_id"])
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])) if not a.get("iscrowd")]
        sx, sy = target["src_scale"].tolist()
        # model input (yxyx) -> stored image (x img_scale) -> original image (/ scale)
        kept = target["bbox"][target["cls"] > 0].double() * target["img_scale"]
        original = torch.stack([kept[:, 1] / sx, kept[:, 0] / sy, kept[:, 3] / sx, kept[:, 2] / sy], 1)
        # Training boxes are clipped to the resized image (rounded to whole pixels, as effdet's ResizePad).
        stored_w, stored_h = target["img_size"].tolist()
        scale = 256 / max(stored_w, stored_h)
        bound = [round(stored_w * scale) / scale / sx, round(stored_h * scale) / scale / sy]
        expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        expected = expected.clip(0, bound * 2)
        assert np.allclose(original.numpy(), expected, atol=1e-3), image_id
        cats = {c["id"]: i + 1 for i, c in enumerate(coco.loadCats(sorted(coco.getCatIds())))}
        assert target["cls"][target["cls"] > 0].long().tolist() == [cats[a["category_id"]] for a in anns]
        gt = target["gt_boxes"][: len(anns)].numpy()
        assert np.allclose(gt, [a["bbox"] for a in anns], atol=1e-9)  # evaluation's ground truth
        checked += len(anns)
    assert checked > 100


def test_flip_moves_boxes_with_the_image(coco_shards):
    sample = next(s for s in _samples(coco_shards) if len(json.loads(s["json"])["boxes"]) >= 2)
    meta = json.loads(sample["json"])
    decoder = DetectionDecoder(256, train=True)
    plain = DetectionDecoder(256, train=False)(sample, "jpg", None)
    outcomes = [decoder(sample, "jpg", seed) for seed in range(8)]
    flipped = [o for o in outcomes if not torch.equal(o[0], plain[0])]
    assert flipped and len(flipped) < len(outcomes)
    scale = 256 / max(meta["width"], meta["height"])
    nw, nh = round(meta["width"] * scale), round(meta["height"] * scale)
    image, target = flipped[0]
    assert torch.equal(image[:, :nh, :nw], plain[0][:, :nh, :nw].flip(-1))
    valid = target["cls"] > 0
    mirrored = plain[1]["bbox"][valid].clone()
    mirrored[:, [1, 3]] = nw - plain[1]["bbox"][valid][:, [3, 1]]
    assert torch.allclose(target["bbox"][valid], mirrored, atol=1e-4)


def test_ground_truth_as_detections_scores_map_one(coco_shards):
    categories = categories_of(open_shard_set(str(coco_shards)))
    decoder = DetectionDecoder(256, train=False)
    images, annotations, results = [], [], []
    for sample in _samples(coco_shards):
        _, target = decoder(sample, "jpg", None)
        batch = {k: v[None] for k, v in target.items()}
        n = int((target["gt_cats"] >= 0).sum())
        sx, sy = target["src_scale"].tolist()
        x, y, w, h = target["gt_boxes"][:n].T
        label = {c["id"]: i + 1 for i, c in enumerate(categories)}
        cls = torch.tensor([label[int(c)] for c in target["gt_cats"][:n]], dtype=torch.float64)
        # as effdet returns them: xyxy in the stored image, score, 1-based class
        dets = torch.stack([x * sx, y * sy, (x + w) * sx, (y + h) * sy, torch.ones(n, dtype=torch.float64), cls], 1)
        results += to_coco_results(dets[None], batch, categories)
        batch_images, batch_annotations = ground_truth(batch)
        images += batch_images
        annotations += batch_annotations
    stats = run_cocoeval(images, annotations, results, categories)
    assert stats["map"] == pytest.approx(1.0) and stats["map50"] == pytest.approx(1.0)
    assert run_cocoeval(images, annotations, [], categories)["map"] == 0.0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_torchrun_two_gloo_processes_detection(coco_shards, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_port", str(29400 + os.getpid() % 1000), str(REPO / "train" / "detect.py"),
           "--shards", str(coco_shards), "--val", str(coco_shards), "--img-size", "128", "--batch-size", "2",
           "--workers", "1", "--epochs", "1", "--finetune-epochs", "1", "--out", str(run), "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=580)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == ["train", "finetune"]
    assert all(r["steps_min"] == r["steps_max"] == "6" for r in rows)  # 24 // (2 x 2)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_images"] == 24 and 0 <= summary["map"] <= 1 and summary["task"] == "detection"


@pytest.mark.parametrize("argv, message", [
    (["--shards", "x", "--img-size", "200"], "--img-size 200 must be a multiple of 128 for EfficientDet"),
    (["--shards", "x", "--mix", "sage"], "unrecognized arguments: --mix sage"),
    (["--shards", "x", "--max-boxes", "0"], "invalid value for --max-boxes"),
])
def test_detection_flags(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv, task="detection")
    assert message in capsys.readouterr().err


def test_help_says_sage_is_not_applied(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"], task="detection")
    assert "SAGE and other mixing are not applied to detection" in " ".join(capsys.readouterr().out.split())
