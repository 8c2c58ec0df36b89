"""Records/s of the sharding job (1 and 2 Ray workers) vs bare single-process loops, same images.

    python bench/bench_shard_job.py [--images 5000] [--samples-per-shard 250]
    python bench/bench_shard_job.py --data coco128 [--images 1024] [--samples-per-shard 64]

`--data cifar` (default): 32x32 CIFAR-10 JPEGs, where per-record fixed costs dominate.
`--data coco128`: COCO-sized JPEGs (about 640 px on the long side): the 128 images of
`../shared/data/coco128`, each copied under new names until there are `--images` files (one class
folder), so the job and the loops read as many files as at CIFAR size but decode real photographs.

Baselines, one process, no Ray, no tar: (a) decode + re-encode each image (JPEG q95), the
classic "convert a folder" loop; (b) decode only, which is the per-record work the job really
does when a file can be stored as is. Ray's cluster start-up is timed apart and excluded from the
job's rate (it is paid once per job, not per record); everything after it is included: listing the
source, scheduling, decoding, tar writing, fsync, hashing, the manifest.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import secrets
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "data" / "cifar10" / "train.tar"
COCO_IMAGES = REPO.parent / "shared" / "data" / "coco128" / "images" / "train2017"


def extract(n_images: int, target: Path) -> Path:
    per_class = n_images // 10
    counts: dict[str, int] = {}
    with tarfile.open(CIFAR) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or counts.get(parts[-2], 0) >= per_class:
                if len(counts) == 10 and min(counts.values()) >= per_class:
                    break
                continue
            counts[parts[-2]] = counts.get(parts[-2], 0) + 1
            out = target / parts[-2] / parts[-1]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
    return target


def copy_coco(n_images: int, target: Path) -> Path:
    """`n_images` files in target/coco/: COCO128's JPEGs, each repeated under new names."""
    images = sorted(COCO_IMAGES.glob("*.jpg"))
    (target / "coco").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        shutil.copyfile(images[i % len(images)], target / "coco" / f"{i:06d}.jpg")
    return target


def bare_loop(files: list[Path], reencode: bool) -> float:
    start = time.perf_counter()
    for path in files:
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            rgb = img.convert("RGB")
            if reencode:
                rgb.save(io.BytesIO(), format="JPEG", quality=95, subsampling=0)
    return len(files) / (time.perf_counter() - start)


def job_rate(root: Path, out: Path, workers: int, per_shard: int, ray_temp: str) -> tuple[float, float]:
    import ray

    from pipeline.job import run_job
    from pipeline.job_config import GenerateConfig

    start = time.perf_counter()
    ray.init(address="local", num_cpus=workers, include_dashboard=False,
             object_store_memory=256 * 1024**2, _temp_dir=ray_temp,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})

    @ray.remote(num_cpus=1)
    def warm() -> None:
        import pipeline.shards  # noqa: F401  (worker start-up and imports: part of cluster start)

    ray.get([warm.remote() for _ in range(workers)])
    startup = time.perf_counter() - start
    try:
        start = time.perf_counter()
        run_job(GenerateConfig(source=f"imagefolder:{root}", out=str(out), workers=workers,
                               samples_per_shard=per_shard, progress=False, variants=0))
        elapsed = time.perf_counter() - start
    finally:
        ray.shutdown()
    n = sum(1 for _ in root.rglob("*.jpg"))
    return n / elapsed, startup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("cifar", "coco128"), default="cifar")
    parser.add_argument("--images", type=int, default=None, help="default 5000 (cifar), 1024 (coco128)")
    parser.add_argument("--samples-per-shard", type=int, default=None, help="default 250 (cifar), 64 (coco128)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    coco = args.data == "coco128"
    args.images = args.images or (1024 if coco else 5000)
    args.samples_per_shard = args.samples_per_shard or (64 if coco else 250)
    needed = COCO_IMAGES if coco else CIFAR
    if not needed.exists():
        raise SystemExit(f"needs {needed} (the project's shared data)")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Token auth stays on with the token in the environment, so Ray writes none under ~/.ray (as the tests).
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    work = Path(tempfile.mkdtemp(prefix="bench_shard_"))
    ray_temp = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # short: Ray's socket paths are limited
    try:
        root = copy_coco(args.images, work / "coco") if coco else extract(args.images, work / "cifar")
        files = sorted(root.rglob("*.jpg"))
        bare_loop(files[:200], reencode=True)  # warm the page cache and Pillow
        # Rounds interleave the bare loops and the job so that machine noise hits them alike.
        rounds = []
        for r in range(args.rounds):
            row = {"reencode": bare_loop(files, reencode=True), "decode": bare_loop(files, reencode=False)}
            for workers in (1, 2):
                row[workers], row[f"start{workers}"] = job_rate(root, work / f"out{r}-{workers}", workers,
                                                                args.samples_per_shard, ray_temp)
            rounds.append(row)
        med = {k: statistics.median(row[k] for row in rounds) for k in rounds[0]}
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
              f"median of {args.rounds} interleaved rounds [min-max]")
        what = "COCO128 JPEGs (about 640 px, repeated)" if coco else "CIFAR-10 images (32 px)"
        print(f"{len(files)} {what}, {args.samples_per_shard} per shard")
        print(f"bare loop decode+re-encode : {med['reencode']:8.0f} rec/s")
        print(f"bare loop decode only      : {med['decode']:8.0f} rec/s")
        for workers in (1, 2):
            vs_re = [row[workers] / row["reencode"] for row in rounds]
            vs_dec = [row[workers] / row["decode"] for row in rounds]
            print(f"job, {workers} worker(s)           : {med[workers]:8.0f} rec/s   "
                  f"x{statistics.median(vs_re):.2f} vs decode+re-encode [{min(vs_re):.2f}-{max(vs_re):.2f}], "
                  f"x{statistics.median(vs_dec):.2f} vs decode only   "
                  f"(cluster start {med[f'start{workers}']:.1f} s, excluded)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_temp, ignore_errors=True)


if __name__ == "__main__":
    main()
