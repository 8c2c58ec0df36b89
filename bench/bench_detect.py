"""Detection training images/s at 256x256 (effdet d0, CPU): shards vs a map-style COCO-folder dataset.

    python bench/bench_detect.py [--steps 10] [--workers 2] [--batch-size 8]

Both feed the same decoder (resize-and-pad, flip, yxyx targets) and the same model; the only
difference is where the bytes and boxes come from: COCO128 shards written by the job, or the COCO
image folder and its JSON through pycocotools. Loader-only rates are printed too.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import effdet
import torch
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset

from manifests import write_manifest
from pipeline.assemble import build_manifest
from pipeline.job_config import GenerateConfig
from pipeline.records import RecordSettings
from pipeline.shards import write_shard_set
from pipeline.sources import coco_source
from train.detection import DetectionDecoder
from train.stream import TrainStream, open_shard_set

REPO = Path(__file__).resolve().parents[1]
COCO128 = REPO.parent / "shared" / "data" / "coco128"
ANNOTATIONS = COCO128 / "annotations" / "instances_train2017.json"
IMAGES = COCO128 / "images" / "train2017"


class CocoFolder(Dataset):
    """The plain way: pycocotools for the boxes, one image file per sample."""

    def __init__(self, decoder: DetectionDecoder):
        with contextlib_quiet():
            self.coco = COCO(str(ANNOTATIONS))
        self.ids = sorted(self.coco.getImgIds())
        self.label = {c: i for i, c in enumerate(sorted(self.coco.getCatIds()))}
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        info = self.coco.loadImgs([self.ids[index]])[0]
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[info["id"]]))
        meta = {"boxes": [a["bbox"] for a in anns], "box_labels": [self.label[a["category_id"]] for a in anns],
                "iscrowd": [a.get("iscrowd", 0) for a in anns], "width": info["width"], "height": info["height"],
                "index": index, "coco_image_id": info["id"]}
        data = (IMAGES / info["file_name"]).read_bytes()
        sample = {"__key__": f"img{index}", "__url__": str(IMAGES), "jpg": data, "json": json.dumps(meta)}
        return self.decoder(sample, "jpg", index)


def contextlib_quiet():
    import contextlib

    return contextlib.redirect_stdout(io.StringIO())


def make_shards(out: Path) -> Path:
    source = coco_source(ANNOTATIONS, IMAGES)
    settings = RecordSettings(key_prefix="coco", class_names=tuple(source.classes))
    done = write_shard_set(source, out, 32, settings)
    cfg = GenerateConfig(source=f"coco:{ANNOTATIONS}:{IMAGES}", out=str(out), samples_per_shard=32, variants=0)
    write_manifest(out, build_manifest(cfg, source, 128, done))
    return out


def forever(loader):
    while True:  # re-iterate: itertools.cycle would replay cached batches without decoding them
        yield from loader


def rate(loader, steps: int, model=None, optimizer=None) -> float:
    batches = forever(loader)
    for _ in range(2):  # warm-up
        _step(next(batches), model, optimizer)
    start, n = time.perf_counter(), 0
    for _ in range(steps):
        batch = next(batches)
        _step(batch, model, optimizer)
        n += batch[0].shape[0]
    return n / (time.perf_counter() - start)


def _step(batch, model, optimizer) -> None:
    if model is None:
        return
    x, target = batch[0], batch[1]
    loss = model(x, {"bbox": target["bbox"], "cls": target["cls"]})["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    if not ANNOTATIONS.exists():
        raise SystemExit(f"needs {COCO128} (the project's shared data)")
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="bench_detect_"))
    try:
        shard_set = open_shard_set(str(make_shards(work)))
        decoder = DetectionDecoder(256, train=True)
        stream = TrainStream(shard_set, decoder, args.batch_size, 128 // args.batch_size, rank=0, world=1, seed=0,
                             orig_prob=0.5, use_variants=True, max_bad=0)
        loaders = {
            "COCO folder (map-style)": DataLoader(CocoFolder(decoder), batch_size=args.batch_size, shuffle=True,
                                                  num_workers=args.workers, drop_last=True),
            "shards": DataLoader(stream, batch_size=args.batch_size, num_workers=args.workers),
        }
        model = effdet.create_model("tf_efficientdet_d0", bench_task="train", num_classes=80, pretrained=False,
                                    pretrained_backbone=False, image_size=(256, 256), bench_labeler=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loader_rates = {name: rate(loader, 3 * args.steps) for name, loader in loaders.items()}
        train_rates = {name: rate(loader, args.steps, model, optimizer) for name, loader in loaders.items()}
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {args.workers} workers, batch {args.batch_size}, COCO128 at 256x256")
        base_l, base_t = loader_rates["COCO folder (map-style)"], train_rates["COCO folder (map-style)"]
        for name in loaders:
            print(f"{name:25s} loader only {loader_rates[name]:7.1f} img/s (x{loader_rates[name] / base_l:.2f})   "
                  f"training {train_rates[name]:6.2f} img/s (x{train_rates[name] / base_t:.2f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
