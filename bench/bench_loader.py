"""Training-loader images/s: shards vs torchvision ImageFolder, and repainted vs original-only shards.

    python bench/bench_loader.py [--data cifar|coco128] [--size 32] [--images 5000] [--workers 2]

All loaders use the same timm train transform (random-resized crop + flip, then normalised), the
same batch size and the same number of workers, on the same images: CIFAR-10 (32 px, at `--size`
32), or COCO128's JPEGs (up to 640 px, the stand-in for ImageNet-sized images, at `--size 224`).
Rows: ImageFolder + DataLoader (per-image float and normalise: the peer); shards read the plain way
(the same per-image transform); shards read the trainer's way (crop drawn before a DCT-scaled JPEG
decode, uint8 to the batch, one normalisation per batch: train/fastdecode.py); and a repainted set
with two stand-in variants per image (colour-inverted and posterized JPEGs), read the trainer's way,
so the variant choice and the larger samples are measured.
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
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
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
from train.fastdecode import BatchNormalize  # noqa: E402
from train.stream import TrainStream, open_shard_set  # noqa: E402


def two_variants(image, key, meta):
    return {"rp0.jpg": encode_image(ImageOps.invert(image), "jpg"),
            "rp1.jpg": encode_image(ImageOps.posterize(image, 3), "jpg")}


COCO128 = REPO.parent / "shared" / "data" / "coco128" / "images" / "train2017"


def shard(root: Path, out: Path, repaint, per_shard: int) -> Path:
    source = image_folder_source(root)
    settings = RecordSettings("imagefolder", tuple(source.classes))
    done = write_shard_set(source, out, per_shard, settings, repaint=repaint)
    manifest = build_manifest(GenerateConfig(source=f"imagefolder:{root}", out=str(out), variants=0), source,
                              len(source.records), done)
    manifest["variants"] = 2 if repaint else 0
    write_manifest(out, manifest)
    return out


def images_per_s(loader, normalise, epochs: int) -> float:
    """Images/s of whole epochs, each batch made ready for the model as the trainer does."""
    for _ in loader:  # warm-up epoch: worker start-up and page cache
        break
    start, n = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            x = normalise(batch[0]) if normalise is not None else batch[0]
            n += x.shape[0]
    return n / (time.perf_counter() - start)


def prepare_images(args, work: Path) -> Path:
    if args.data == "cifar":
        if not CIFAR.exists():
            raise SystemExit(f"needs {CIFAR} (the project's shared data)")
        return extract(args.images, work / "images")
    if not COCO128.is_dir():
        raise SystemExit(f"needs {COCO128} (the project's shared data)")
    folder = work / "images" / "coco"  # one class: only the reading is measured
    folder.mkdir(parents=True)
    for image in sorted(COCO128.glob("*.jpg")):
        shutil.copyfile(image, folder / image.name)  # copies: the source refuses links to outside it
    return work / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("cifar", "coco128"), default="cifar")
    parser.add_argument("--size", type=int, default=None, help="crop size (default: 32 for cifar, 224 for coco128)")
    parser.add_argument("--images", type=int, default=5000, help="CIFAR-10 images (COCO128 has 128)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per round (default: 2 cifar, 8 coco128)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    size = args.size or (32 if args.data == "cifar" else 224)
    epochs = args.epochs or (2 if args.data == "cifar" else 8)
    batch = args.batch_size if args.data == "cifar" else min(args.batch_size, 32)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        root = prepare_images(args, work)
        scale = (0.35, 1.0) if args.data == "cifar" else (0.08, 1.0)
        per_image = create_transform(size, is_training=True, scale=scale, color_jitter=0.0)
        as_uint8 = create_transform(size, is_training=True, scale=scale, color_jitter=0.0, use_prefetcher=True)
        normalise = BatchNormalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        folder = torchvision.datasets.ImageFolder(str(root), transform=per_image)
        per_shard = 500 if args.data == "cifar" else 16
        originals = open_shard_set(str(shard(root, work / "originals", None, per_shard)))
        repainted = open_shard_set(str(shard(root, work / "repainted", two_variants, per_shard)))

        def stream(shard_set, decoder) -> DataLoader:
            s = TrainStream(shard_set, decoder, batch, shard_set.samples // batch, rank=0, world=1, seed=0,
                            orig_prob=0.5, use_variants=True, max_bad=0)
            return DataLoader(s, batch_size=batch, num_workers=args.workers)

        loaders = {
            "ImageFolder + DataLoader": lambda: (DataLoader(folder, batch_size=batch, shuffle=True,
                                                            num_workers=args.workers, drop_last=True), None),
            "shards, per-image transform": lambda: (stream(originals, ClassificationDecoder(per_image)), None),
            "shards, trainer's path": lambda: (stream(originals, ClassificationDecoder(as_uint8, crop_first=True)),
                                               normalise),
            "repainted (2 variants), trainer's": lambda: (
                stream(repainted, ClassificationDecoder(as_uint8, crop_first=True)), normalise),
        }
        # Rounds interleave the loaders so that machine noise hits all of them alike; medians are quoted.
        rounds = [{name: images_per_s(*make(), epochs) for name, make in loaders.items()} for _ in range(args.rounds)]
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{args.workers} workers, batch {batch}, {len(folder)} {args.data} images at {size} px, "
              f"median of {args.rounds} interleaved rounds [min-max]")
        base = "ImageFolder + DataLoader"

        def ratio(name: str, peer: str) -> str:
            r = [x[name] / x[peer] for x in rounds]
            return f"x{statistics.median(r):.2f} vs {peer} [{min(r):.2f}-{max(r):.2f}]"

        print(f"{base:36s}: {statistics.median(r[base] for r in rounds):8.0f} img/s")
        for name in list(loaders)[1:]:
            print(f"{name:36s}: {statistics.median(r[name] for r in rounds):8.0f} img/s   {ratio(name, base)}")
        fast, plain = "shards, trainer's path", "shards, per-image transform"
        painted = "repainted (2 variants), trainer's"
        print(f"{'trainer path vs per-image transform':36s}: {ratio(fast, plain)}")
        print(f"{'repainted vs original-only':36s}: {ratio(painted, fast)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
