"""Training-loader images/s: shards vs torchvision ImageFolder, and repainted vs original-only shards.

    python bench/bench_loader.py [--images 5000] [--workers 2] [--epochs 2]

All loaders use the same timm train transform (random-resized crop + flip + normalise, 32x32), the
same batch size and the same number of workers, on the same CIFAR-10 images. The repainted set has
two stand-in variants per image (colour-inverted and posterized JPEGs), so the variant choice and
the larger samples are measured; the repainter's own output would weigh the same.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from PIL import ImageOps
from timm.data import create_transform
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bench_shard_job import CIFAR, extract  # noqa: E402

from manifests import encode_image, write_manifest  # noqa: E402
from pipeline.assemble import build_manifest  # noqa: E402
from pipeline.job_config import GenerateConfig  # noqa: E402
from pipeline.records import RecordSettings  # noqa: E402
from pipeline.shards import write_shard_set  # noqa: E402
from pipeline.sources import image_folder_source  # noqa: E402
from train.classification import ClassificationDecoder  # noqa: E402
from train.stream import TrainStream, open_shard_set  # noqa: E402


def two_variants(image, key, meta):
    return {"rp0.jpg": encode_image(ImageOps.invert(image), "jpg"),
            "rp1.jpg": encode_image(ImageOps.posterize(image, 3), "jpg")}


def shard(root: Path, out: Path, repaint) -> Path:
    source = image_folder_source(root)
    settings = RecordSettings("imagefolder", tuple(source.classes))
    done = write_shard_set(source, out, 500, settings, repaint=repaint)
    manifest = build_manifest(GenerateConfig(source=f"imagefolder:{root}", out=str(out), variants=0), source,
                              len(source.records), done)
    manifest["variants"] = 2 if repaint else 0
    write_manifest(out, manifest)
    return out


def images_per_s(loader, epochs: int) -> float:
    for _ in loader:  # warm-up epoch: worker start-up and page cache
        break
    start, n = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            n += batch[0].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not CIFAR.exists():
        raise SystemExit(f"needs {CIFAR} (the project's shared data)")
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        root = extract(args.images, work / "cifar")
        transform = create_transform(32, is_training=True, scale=(0.35, 1.0), color_jitter=0.0)
        folder = torchvision.datasets.ImageFolder(str(root), transform=transform)
        shard_sets = {name: open_shard_set(str(shard(root, work / name.split()[0], repaint)))
                      for name, repaint in (("original-only shards", None),
                                            ("repainted shards (2 variants)", two_variants))}

        def loader(name: str) -> DataLoader:
            if name == "ImageFolder + DataLoader":
                return DataLoader(folder, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                  drop_last=True)
            shard_set = shard_sets[name]
            stream = TrainStream(shard_set, ClassificationDecoder(transform), args.batch_size,
                                 shard_set.samples // args.batch_size, rank=0, world=1, seed=0, orig_prob=0.5,
                                 use_variants=True, max_bad=0)
            return DataLoader(stream, batch_size=args.batch_size, num_workers=args.workers)

        # Rounds interleave the loaders so that machine noise hits all of them alike; medians are quoted.
        names = ["ImageFolder + DataLoader", *shard_sets]
        rounds = [{name: images_per_s(loader(name), args.epochs) for name in names} for _ in range(args.rounds)]
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{args.workers} workers, batch {args.batch_size}, {len(folder)} CIFAR-10 images, "
              f"median of {args.rounds} interleaved rounds [min-max]")
        base = [r["ImageFolder + DataLoader"] for r in rounds]
        print(f"{'ImageFolder + DataLoader':29s}: {statistics.median(base):8.0f} img/s")
        for name in shard_sets:
            ratios = [r[name] / r["ImageFolder + DataLoader"] for r in rounds]
            print(f"{name:29s}: {statistics.median(r[name] for r in rounds):8.0f} img/s   "
                  f"x{statistics.median(ratios):.2f} vs ImageFolder [{min(ratios):.2f}-{max(ratios):.2f}]")
        ratios = [r["repainted shards (2 variants)"] / r["original-only shards"] for r in rounds]
        print(f"{'repainted vs original-only':29s}: x{statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}-{max(ratios):.2f}]")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
