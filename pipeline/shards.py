"""Writing one shard atomically, recording it as done, and deciding what a resumed job redoes.

A shard is written to a temporary file, fsynced, then renamed into its folder or uploaded to its
bucket (`store.py`); it counts as done only once its done-record (sha256, bytes, samples, skips) is
stored in `.progress/`. A resume re-hashes every shard against its record, keeps what verifies and
redoes the rest. No Ray here: the job calls these.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from manifests import shard_name
from manifests.manifest import dumps_canonical

from .records import RecordSettings, Repainter, process_records
from .sources import Record, Source
from .store import Store, open_store
from .tarwriter import ShardTarWriter

PROGRESS_DIR = ".progress"
TAR_MTIME = 0  # fixed member metadata: same content, same bytes
TAR_OWNER = "repaint"


@dataclass(frozen=True)
class ShardPlan:
    index: int
    start: int  # first record index (inclusive)
    stop: int  # last record index (exclusive)

    @property
    def name(self) -> str:
        return shard_name(self.index)


def plan_shards(n_records: int, per_shard: int) -> list[ShardPlan]:
    """Records go to shards by index alone, so the layout never depends on worker count."""
    if per_shard <= 0:
        raise ValueError(f"samples per shard must be > 0, got {per_shard}")
    return [ShardPlan(i, s, min(s + per_shard, n_records))
            for i, s in enumerate(range(0, n_records, per_shard))]


def shuffled(records: list[Record], seed: int) -> list[Record]:
    """A seeded order, so that a shard mixes classes (an ImageFolder lists them one after another).

    Readers shuffle only within a buffer; shards written in class order would give one-class batches.
    Keys still come from the source index, so they do not change with the order.
    """
    def rank(record: Record) -> bytes:
        return hashlib.sha256(f"{seed}:order:{record.index}".encode()).digest()

    return sorted(records, key=rank)


def write_shard(
    plan: ShardPlan, records: list[Record], settings: RecordSettings, out_dir: str,
    fingerprint: str, repaint: Repainter | None = None, origin: dict | None = None, paint_batch: int = 1,
) -> dict:
    """Process `records` into shard `plan.name` of the set at `out_dir` (a folder or an s3:// prefix);
    return its done-record, which is stored only once the shard is. `origin` (who wrote it) joins the
    record."""
    store = open_store(out_dir)
    tmp = store.temporary(plan.name)
    skipped, notes, n_boxes, keys = [], Counter(), 0, []
    try:
        with open(tmp, "wb") as f:
            with ShardTarWriter(f, owner=TAR_OWNER, mtime=TAR_MTIME) as writer:
                for result in process_records(records, settings, repaint, paint_batch):
                    notes.update(result.notes)
                    if result.skip is not None:
                        skipped.append(result.skip)
                        continue
                    writer.write(result.sample)
                    keys.append(result.sample["__key__"])
                    n_boxes += result.boxes
            f.flush()
            os.fsync(f.fileno())
        digest, size = writer.sha256.hexdigest(), writer.size
        store.commit(tmp, plan.name)
    finally:
        tmp.unlink(missing_ok=True)
    done = {
        "name": plan.name, "index": plan.index, "start": plan.start, "stop": plan.stop,
        "bytes": size, "sha256": digest, "samples": len(keys),
        "first_key": keys[0] if keys else None, "last_key": keys[-1] if keys else None,
        "skipped": skipped, "conversions": dict(sorted(notes.items())), "boxes": n_boxes,
        "fingerprint": fingerprint, **({"written_by": origin} if origin else {}),
    }
    store.write_bytes(f"{PROGRESS_DIR}/{plan.name}.json", dumps_canonical(done).encode())
    return done


def load_done(store: Store, plan: ShardPlan, fingerprint: str) -> dict | None:
    """The done-record of a shard if the stored shard still matches it (size, then sha256), else None."""
    try:
        done = json.loads(store.read_bytes(f"{PROGRESS_DIR}/{plan.name}.json") or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(done, dict) or done.get("fingerprint") != fingerprint:
        return None
    if (done.get("start"), done.get("stop")) != (plan.start, plan.stop):
        return None
    if store.size(plan.name) != done["bytes"] or store.sha256(plan.name) != done["sha256"]:
        return None
    return done


def write_shard_set(source: Source, out: str | Path, samples_per_shard: int, settings: RecordSettings,
                    repaint: Repainter | None = None, seed: int = 0) -> list[dict]:
    """Every shard of `source` in this process, in the job's seeded order: for tests and benchmarks.

    The job (pipeline/job.py) does the same on Ray, with resume; this returns the done-records for
    `assemble.build_manifest`.
    """
    Path(out).mkdir(parents=True, exist_ok=True)
    records = shuffled(source.records, seed)
    return [write_shard(plan, records[plan.start:plan.stop], settings, str(out), "in-process", repaint=repaint)
            for plan in plan_shards(len(records), samples_per_shard)]
