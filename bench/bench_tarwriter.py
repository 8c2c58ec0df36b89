"""Is the hand-written tar writer worth keeping? Its cost and webdataset.TarWriter's, against the job's.

    python bench/bench_tarwriter.py [--rounds 5] [--cifar 2000] [--coco 128]

For CIFAR-10 (32 px) and COCO128 (640 px) records of `../shared/data`: the job's per-record work
(`records.process_record`: read, safe decode, re-encode when needed, metadata) is timed once, then
the resulting samples are written to an in-memory shard by `pipeline.tarwriter.ShardTarWriter`
and by `webdataset.TarWriter` (with a sha256-hashing file wrapper, which the job needs), in
interleaved rounds. Printed: microseconds per sample, each writer's share of the job's per-record
time, and whether the two outputs are byte-identical. The project's rule (DESIGN §5): keep the
hand-written writer only where webdataset's costs more than ~10 % of the job.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import platform
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import webdataset as wds

from pipeline.records import RecordSettings, process_record
from pipeline.shards import TAR_MTIME, TAR_OWNER
from pipeline.sources import open_source
from pipeline.tarwriter import ShardTarWriter

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


class HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what passes through (what the job needs from a writer)."""

    def __init__(self, inner):
        self.inner, self.sha256, self.size = inner, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.inner.write(data)


def with_ours(samples: list[dict]) -> bytes:
    buf = io.BytesIO()
    with ShardTarWriter(buf, owner=TAR_OWNER, mtime=TAR_MTIME) as writer:
        for sample in samples:
            writer.write(sample)
    return buf.getvalue()


def with_webdataset(samples: list[dict]) -> bytes:
    buf = io.BytesIO()
    hashing = HashingFile(buf)
    writer = wds.TarWriter(hashing, user=TAR_OWNER, group=TAR_OWNER, mode=0o444, mtime=TAR_MTIME, encoder=False)
    writer.tarstream.format = tarfile.USTAR_FORMAT
    for sample in samples:
        writer.write(sample)
    writer.close()
    return buf.getvalue()


def records_of(kind: str, limit: int, scratch: Path):
    if kind == "cifar":
        folder = scratch / "cifar"
        with tarfile.open(DATA / "cifar10" / "train.tar") as tar:
            members = [m for m in tar if m.isfile() and m.name.endswith(".jpg")][:limit]
            tar.extractall(folder, members=members, filter="data")
        return open_source(f"imagefolder:{next(folder.iterdir())}")
    coco = DATA / "coco128"
    return open_source(f"coco:{coco / 'annotations' / 'instances_train2017.json'}:{coco / 'images' / 'train2017'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cifar", type=int, default=2000, help="CIFAR-10 images")
    p.add_argument("--coco", type=int, default=128, help="COCO128 images")
    args = p.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"webdataset {wds.__version__ if hasattr(wds, '__version__') else '?'}")
    with tempfile.TemporaryDirectory() as scratch:
        for kind, limit in (("cifar", args.cifar), ("coco", args.coco)):
            source = records_of(kind, limit, Path(scratch))
            records = source.records[:limit]
            settings = RecordSettings(key_prefix=kind, class_names=tuple(source.classes))
            start = time.perf_counter()
            samples = [r.sample for r in (process_record(rec, settings) for rec in records) if r.sample]
            job_us = (time.perf_counter() - start) / len(samples) * 1e6
            identical = with_ours(samples) == with_webdataset(samples)
            times: dict[str, list[float]] = {"ours": [], "webdataset": []}
            for _ in range(args.rounds):  # interleaved, so drift hits both alike
                for name, write in (("ours", with_ours), ("webdataset", with_webdataset)):
                    start = time.perf_counter()
                    write(samples)
                    times[name].append((time.perf_counter() - start) / len(samples) * 1e6)
            ours, theirs = statistics.median(times["ours"]), statistics.median(times["webdataset"])
            print(f"{kind:5s} {len(samples)} samples, job per record {job_us:8.1f} us | tar writing per sample: "
                  f"ours {ours:6.1f} us ({100 * ours / job_us:4.1f} % of the job), webdataset {theirs:6.1f} us "
                  f"[{min(times['webdataset']):.1f}-{max(times['webdataset']):.1f}] "
                  f"({100 * theirs / job_us:4.1f} %), ratio {theirs / ours:.2f}x, byte-identical: {identical}")


if __name__ == "__main__":
    main()
