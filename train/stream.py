"""Streaming a shard set for training and evaluation, as webdataset-style stages.

Shard list for (epoch, rank, worker) -> open -> tar members (`tarstream.tar_file_expander`, this
project's fast reader in webdataset's stage form) -> samples (webdataset's `group_by_keys`) ->
count check -> shuffle (webdataset's) -> variant choice + explicit decode -> transform.
Nothing here unpickles: only image fields and `cls` are ever decoded, and a sample holding a
field outside the contract's allowlist (e.g. `pyd`, `pth`) is skipped and counted.

Every random draw is derived from (seed, epoch, key) or (seed, epoch, worker), so a run is the
same whatever the number of loader workers per rank, and a resumed epoch can skip batches
without decoding them.
"""

from __future__ import annotations

import logging
import os
import random
import stat
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.filters import shuffle as wds_shuffle
from webdataset.tariterators import group_by_keys

from manifests import ContractError, check_field, decode_image, load_manifest, resolve_shard
from manifests.contract import ORIGINAL_FIELDS, derive_seed
from manifests.objectstore import is_object_url, open_object

from .tarstream import tar_file_expander

log = logging.getLogger("train.stream")


@dataclass(frozen=True)
class Shard:
    url: str
    samples: int
    sha256: str


@dataclass
class ShardSet:
    shards: list[Shard]
    classes: list[str]
    variants: int
    location: str
    categories: list[dict] | None = None  # COCO categories (id, name) of a detection set

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


def open_shard_set(location: str) -> ShardSet:
    """Read the manifest (folder, file, http(s) or s3 URL); every shard URL is checked first."""
    manifest, base = load_manifest(location)
    shards = [Shard(resolve_shard(base, s["name"]), s["samples"], s["sha256"]) for s in manifest["shards"]]
    return ShardSet(shards, list(manifest.get("classes") or []), int(manifest["variants"]), location,
                    manifest.get("categories"))


def open_stream(url: str):
    """A shard's byte stream. A local path is opened non-blocking and must be a regular file, so a
    FIFO named like a shard is an error (counted as a bad shard), not a reader blocked forever."""
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=60)  # noqa: S310 (allowlisted by the contract)
    if is_object_url(url):
        return open_object(url)  # a client per process: safe in forked loader workers
    fd = os.open(url.removeprefix("file://"), os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{url}: not a regular file")
    return os.fdopen(fd, "rb")


class TooManyBadSamples(RuntimeError):
    """More bad samples or shards than --max-bad allows; the message lists each with its reason."""


@dataclass
class BadSamples:
    """Skipped samples and shards, with where and why; past `limit` the run stops with the list."""

    limit: int
    entries: list[tuple[str, str, str]] = field(default_factory=list)  # (url, key, reason)
    pending: int = 0  # not yet reported to the consumer

    def add(self, url: str, key: str, reason: str, count: int = 1) -> None:
        self.entries.append((url, key, reason))
        self.pending += count
        log.warning("skipped %s %s: %s", url, key or "", reason)
        if len(self.entries) > self.limit:
            listing = "\n".join(f"  {u} {k}: {r}" for u, k, r in self.entries)
            raise TooManyBadSamples(f"more than {self.limit} bad samples or shards (--max-bad); stopping:\n{listing}")

    def take(self) -> int:
        count, self.pending = self.pending, 0
        return count


def counted_samples(urls: Iterator[str], expected: dict[str, int], bad: BadSamples) -> Iterator[dict]:
    """Samples of each shard in turn; a tar error or a short shard is counted, never silent."""
    for url in urls:
        seen = 0

        def on_error(exn: Exception, url: str = url) -> bool:
            bad.add(url, "", f"unreadable tar: {exn}")
            return True

        try:
            stream = open_stream(url)
        except OSError as exc:
            bad.add(url, "", f"cannot open: {exc}", count=expected[url])
            continue
        with stream:
            files = tar_file_expander([{"url": url, "stream": stream}], handler=on_error)
            for sample in group_by_keys(files, handler=on_error):
                seen += 1
                yield sample
        if seen < expected[url]:  # a tar cut at a header boundary reads short with no error
            bad.add(url, "", f"short shard: manifest says {expected[url]} samples, read {seen}",
                    count=expected[url] - seen)


def choose_field(sample: dict, seed: int, epoch: int, orig_prob: float, use_variants: bool) -> str:
    """One of the sample's variants, or the original with probability `orig_prob`."""
    original = next((f for f in ORIGINAL_FIELDS if f in sample), None)
    if original is None:
        raise ValueError("no original image field (jpg/png)")
    variants = sorted(f for f in sample if f.startswith("rp") and f.endswith((".jpg", ".png")))
    if not use_variants or not variants:
        return original
    rng = random.Random(derive_seed(seed, epoch, sample["__key__"], "variant"))
    return original if rng.random() < orig_prob else rng.choice(variants)


def read_image(sample: dict, image_field: str, draft: Callable | None = None):
    """The chosen image of a sample, safely decoded (see `decode_image` for `draft`); a pickle member
    makes the sample bad. The other images of the sample are never decoded."""
    for name in sample:
        if not name.startswith("__"):
            check_field(name)  # never decoded, only refused
    where = f"{sample['__url__']}:{sample['__key__']}.{image_field}"
    return decode_image(sample[image_field], where, draft=draft).image


def seed_augmentation(aug_seed: int) -> None:
    """Per-sample augmentation draws, independent of which worker reads the sample."""
    random.seed(aug_seed)
    # Only the CPU generator: torch.manual_seed also queues a lazy CUDA seed, which formats a
    # stack trace per call on CUDA builds (measured: the loader's largest cost).
    torch.random.default_generator.manual_seed(aug_seed)


class TrainStream(IterableDataset):
    """Exactly `steps * batch_size` samples per rank per epoch, split over the loader's workers."""

    def __init__(self, shard_set: ShardSet, decoder: Callable, batch_size: int, steps: int, rank: int,
                 world: int, seed: int, orig_prob: float, use_variants: bool, max_bad: int,
                 shuffle_buffer: int = 1000):
        self.shard_set, self.decoder, self.batch_size, self.steps = shard_set, decoder, batch_size, steps
        self.rank, self.world, self.seed = rank, world, seed
        self.orig_prob, self.use_variants, self.max_bad = orig_prob, use_variants, max_bad
        self.shuffle_buffer = shuffle_buffer
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def _urls(self, global_worker: int, global_workers: int) -> Iterator[str]:
        """Endless passes over the set, reshuffled each pass with a seed every rank shares."""
        urls = [s.url for s in self.shard_set.shards]
        for pass_index in range(1 << 30):
            order = list(urls)
            random.Random(derive_seed(self.seed, self.epoch, pass_index, "shards")).shuffle(order)
            if len(order) >= global_workers:
                yield from order[global_worker::global_workers]
            else:  # fewer shards than workers: every worker still gets one, resampled
                yield order[(global_worker + pass_index * global_workers) % len(order)]

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        # Batch i of the epoch comes from reader i % n_workers (DataLoader's round robin). The
        # round robin always starts at worker 0, so after skipping `start_step` batches worker w
        # plays the part of reader (w + start_step) % n_workers.
        reader = (worker + self.start_step) % n_workers
        quota = self.steps // n_workers + (reader < self.steps % n_workers)
        skip = self.start_step // n_workers + (reader < self.start_step % n_workers)
        global_worker = self.rank * n_workers + reader
        bad = BadSamples(self.max_bad)
        expected = {s.url: s.samples for s in self.shard_set.shards}
        samples = counted_samples(self._urls(global_worker, self.world * n_workers), expected, bad)
        rng = random.Random(derive_seed(self.seed, self.epoch, global_worker, "shuffle"))
        # The source never ends, so whatever the buffer holds at the end of the epoch was read for
        # nothing: keep it small next to the worker's share of the epoch.
        buffer = max(1, min(self.shuffle_buffer, quota * self.batch_size // 4))
        samples = wds_shuffle(bufsize=buffer, initial=buffer, rng=rng)(samples)
        wanted, skipped = (quota - skip) * self.batch_size, 0
        for sample in samples:
            if skipped < skip * self.batch_size:  # resuming mid-epoch: skip before decoding
                skipped += 1
                continue
            try:
                name = choose_field(sample, self.seed, self.epoch, self.orig_prob, self.use_variants)
                aug_seed = derive_seed(self.seed, self.epoch, sample["__key__"], "aug")
                item = self.decoder(sample, name, aug_seed)
            except (ValueError, ContractError) as exc:
                bad.add(sample.get("__url__", "?"), sample.get("__key__", "?"), str(exc))
                continue
            yield *item, bad.take()
            wanted -= 1
            if wanted == 0:
                return


class EvalStream(IterableDataset):
    """Every original exactly once across ranks and workers; no shuffling, no variants."""

    def __init__(self, shard_set: ShardSet, decoder: Callable, rank: int, world: int, max_bad: int):
        self.shard_set, self.decoder, self.rank, self.world = shard_set, decoder, rank, world
        self.max_bad = max_bad

    def __iter__(self) -> Iterator[tuple]:
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        mine = self.shard_set.shards[self.rank * n_workers + worker::self.world * n_workers]
        bad = BadSamples(self.max_bad)
        expected = {s.url: s.samples for s in mine}
        held = None  # one item held back, so bad shards after the last good sample are still counted
        for sample in counted_samples(iter(expected), expected, bad):
            try:
                name = choose_field(sample, 0, 0, 1.0, use_variants=False)
                item = self.decoder(sample, name, None)
            except (ValueError, ContractError) as exc:
                bad.add(sample.get("__url__", "?"), sample.get("__key__", "?"), str(exc))
                continue
            if held is not None:
                yield *held, bad.take()
            held = item
        if held is not None:  # (a worker whose every shard is bad has no sample to carry the count: logged only)
            yield *held, bad.take()
