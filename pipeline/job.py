"""The sharding job on Ray: one task writes one shard; the driver resumes, tracks and assembles.

Only this module, the shard task (tasks.py) and the repainter's orchestration (repaint/job.py,
repaint/train.py) import ray.
Every task is a plain call of `shards.write_shard`, so what runs on a worker is what the tests run without Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

import ray
from tqdm import tqdm

from manifests import MANIFEST_NAME
from manifests.manifest import dumps_canonical, validate_manifest
from manifests.objectstore import is_object_url

from .assemble import TIMM_INFO_NAME, build_manifest, job_fingerprint, timm_info
from .job_config import GenerateConfig
from .preview import PREVIEW_NAME, PREVIEW_SAMPLES, preview_png
from .records import RecordSettings
from .repaint.job import REPAINTER_FILE, RepaintPlan, obtain_repainter, start_painters
from .repaint.paint import load_task
from .repaint.quality import QUALITY_LIMIT, measure_shards
from .repaint.train import TASK_FILE
from .shards import ShardPlan, load_done, plan_shards, shuffled
from .sources import open_source
from .store import LocalStore, Store, open_store
from .tasks import write_shard_task

log = logging.getLogger("pipeline")
JOB_FILE = "job.json"
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2  # tasks return small dicts; keep /dev/shm use small


class JobError(RuntimeError):
    """The job cannot go on; the message says which shard or setting and why."""


def quiet_workers() -> ray.job_config.JobConfig:
    """Workers log at ERROR: Ray Train's helpers otherwise warn every second that the State API (a
    dashboard feature this install leaves out) is unavailable. Set on the job, not through
    `ray.init(logging_config=...)`, which would also silence this driver's own log."""
    job_config = ray.job_config.JobConfig()
    job_config.set_py_logging_config(ray.LoggingConfig(encoding="TEXT", log_level="ERROR"))
    return job_config


# The driver's object-store settings reach every task, so that a worker on any node uploads as the
# driver would; nodes with credentials of their own (an instance role) need none of these set.
FORWARDED_AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                 "AWS_EC2_METADATA_DISABLED", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


def object_store_env(out: str) -> dict[str, str]:
    if not is_object_url(out):
        return {}
    return {k: os.environ[k] for k in FORWARDED_AWS if k in os.environ}


class RaySession:
    """Ray, started on first use (a resume with nothing left to do never starts it).

    Joins RAY_ADDRESS / --address / a running local cluster, else starts an embedded one, which it
    shuts down on exit. A session the caller already opened (a notebook, a test) is used and kept.
    """

    def __init__(self, cfg: GenerateConfig):
        self.cfg, self.owned = cfg, False

    def start(self) -> None:
        if ray.is_initialized():
            return
        cfg = self.cfg
        runtime_env = {"env_vars": {"OMP_NUM_THREADS": "1", **object_store_env(cfg.out)}}
        quiet = quiet_workers()
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if not address and not cfg.local and Path("/tmp/ray/ray_current_cluster").exists():
            address = "auto"
        if address and not cfg.local:
            try:
                ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING,
                         job_config=quiet)
                self.owned = True
                return
            except ConnectionError:
                if address != "auto":  # an address the user named must be reachable
                    raise
                log.warning("no live cluster behind /tmp/ray/ray_current_cluster; starting one")
        ray.init(address="local", num_cpus=cfg.workers, include_dashboard=False,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, runtime_env=runtime_env,
                 logging_level=logging.WARNING, job_config=quiet)
        self.owned = True

    def __enter__(self) -> RaySession:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.owned:
            ray.shutdown()


def _claim_out_dir(store: Store, fingerprint: str, description: dict) -> None:
    """Refuse to resume into a folder (or prefix) made with other settings: that would mix two sets."""
    previous = store.read_bytes(JOB_FILE)
    if previous is not None:
        previous = json.loads(previous)
        if previous.get("fingerprint") != fingerprint:
            raise JobError(
                f"{store.location}: holds a shard set made from another source or with other settings "
                f"(was {previous.get('description')}, now {description}); use a new --out"
            )
        return
    store.write_bytes(JOB_FILE, dumps_canonical({"fingerprint": fingerprint, "description": description}).encode())


def _write_shards(cfg: GenerateConfig, todo: list[ShardPlan], records: list, settings: RecordSettings,
                  out: str, fingerprint: str, painters: list | None = None) -> list[dict]:
    """Plain tasks without a repainter; with one, the pool of `painters` (actors that each load it once)."""
    task = ray.remote(num_cpus=1, max_retries=cfg.max_retries)(write_shard_task)
    # A slot is None (a task; 2 per worker keep the CPUs busy) or an actor (one shard at a time).
    free = list(painters) if painters else [None] * (2 * cfg.workers)

    def launch(slot, plan: ShardPlan):
        args = (plan, records[plan.start:plan.stop], settings, out, fingerprint)
        return task.remote(*args) if slot is None else slot.write.remote(*args)

    pending: dict = {}
    queue = list(todo)
    done: list[dict] = []
    n_skipped = 0
    bar = tqdm(total=sum(p.stop - p.start for p in todo), unit="rec", desc="sharding",
               disable=not cfg.progress, smoothing=0.1)
    with bar:
        while queue or pending:
            # Keep a bounded number of shards in flight: enough to overlap, not all at once.
            while queue and free:
                slot, plan = free.pop(), queue.pop(0)
                pending[launch(slot, plan)] = (plan, slot)
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                plan, slot = pending.pop(ref)
                free.append(slot)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise JobError(
                        f"shard {plan.name} (records {plan.start}..{plan.stop - 1}) failed after "
                        f"{cfg.max_retries} retries; rerun to resume the others: {exc}"
                    ) from exc
                done.append(result)
                n_skipped += len(result["skipped"])
                bar.update(plan.stop - plan.start)
                bar.set_postfix(shards=f"{len(done)}/{len(todo)}", skipped=n_skipped)
    nodes = Counter(d["written_by"]["node_id"] for d in done)
    log.info("shards written per Ray node: %s (each done-record in .progress/ names its node and host)",
             ", ".join(f"{node[:12]}...: {n}" for node, n in nodes.most_common()))
    return done


def _covering(shards: list[dict], samples: int) -> list[str]:
    """The fewest of `shards` (in the order given) that hold at least `samples` samples."""
    names, held = [], 0
    for shard in shards:
        if held >= samples:
            break
        names.append(shard["name"])
        held += shard["samples"]
    return names


def read_back(store: Store, manifest: dict, cfg: GenerateConfig, repaint_info: dict,
              checkpoint: Path | None = None) -> None:
    """`preview.png` from the first shards and the variants' quality from the last ones, read back
    from what was stored (downloaded for an object store; only the shards these need).

    Quality is measured from the last shard backwards: the repainter trains on the first
    `--repainter-images` of the same order, so on a set larger than that these are images it never saw.
    Where the training's proxy task lies beside the checkpoint (`task.pt`), its top-1 is measured on
    those same originals and variants: the shards' own paintings, not the training's mix."""
    shards = manifest["shards"]
    with store.local_copies(_covering(shards, 4 * PREVIEW_SAMPLES)) as paths:
        png = preview_png(paths, cfg.variants)
    if png is not None:
        store.write_bytes(PREVIEW_NAME, png)
        manifest["preview"] = PREVIEW_NAME
    task_file = checkpoint.parent / TASK_FILE if checkpoint else None
    task = load_task(checkpoint, task_file) if task_file and task_file.is_file() else None
    with store.local_copies(_covering(shards[::-1], 4 * QUALITY_LIMIT)) as paths:
        quality = measure_shards(paths, cfg.repaint_size, task=task)
    if "proxy_top1" in quality:  # T trained on the first --repainter-images of this order (90 % of them)
        quality["proxy_top1"]["may_include_training_images"] = cfg.repainter_steps > 0 and \
            manifest["totals"]["samples"] - 4 * QUALITY_LIMIT < cfg.repainter_images
    metrics = (repaint_info.get("training") or {}).get("metrics") or {}
    quality.update({k: metrics[k] for k in ("proxy_acc_real", "proxy_acc_painted") if k in metrics})
    manifest["repainter"]["quality"] = quality


def _repainter_for_painting(store: Store, checkpoint: Path) -> str:
    """Painting actors may run on any node: with an object store they read the weights from the bucket."""
    if isinstance(store, LocalStore):
        return str(checkpoint)
    store.write_bytes(REPAINTER_FILE, checkpoint.read_bytes())
    return store.url(REPAINTER_FILE)


def run_job(cfg: GenerateConfig) -> str:
    """Shard `cfg.source` into `cfg.out`, resuming whatever an earlier run left verified."""
    source = open_source(cfg.source)
    records = source.records[: cfg.limit] if cfg.limit else source.records
    if cfg.shuffle:
        records = shuffled(records, cfg.seed)
    store = open_store(cfg.out)
    fingerprint = job_fingerprint(cfg, source)
    _claim_out_dir(store, fingerprint, {"source": cfg.source, **cfg.output_settings()})
    removed = store.remove_stale()
    settings = RecordSettings(key_prefix=source.kind, class_names=tuple(source.classes),
                              max_side=cfg.max_side, max_pixels=cfg.max_pixels)
    plans = plan_shards(len(records), cfg.samples_per_shard)
    with RaySession(cfg) as session:
        repainter, repaint_info, checkpoint = None, None, None
        if cfg.variants:
            plan = RepaintPlan.from_config(cfg, source)
            work = Path(cfg.work or cfg.out).resolve()
            checkpoint, repaint_info = obtain_repainter(plan, records, settings, work, session.start)
            repainter = _repainter_for_painting(store, checkpoint)
            # Shards painted by other weights are other shards: the repainter's hash joins the fingerprint.
            fingerprint = hashlib.sha256(f"{fingerprint}:{repaint_info['sha256']}".encode()).hexdigest()
        done = [d for p in plans if (d := load_done(store, p, fingerprint)) is not None]
        todo = [p for p in plans if p.name not in {d["name"] for d in done}]
        log.info("%d inputs, %d shards: %d verified from an earlier run, %d to write; "
                 "%d stale temporaries removed", len(records), len(plans), len(done), len(todo), removed)
        if todo:
            session.start()
            painters = start_painters(plan, repainter) if repainter else None
            done += _write_shards(cfg, todo, records, settings, store.location, fingerprint, painters)
    manifest = build_manifest(cfg, source, len(records), done, repaint_info)
    if cfg.variants:
        read_back(store, manifest, cfg, repaint_info, checkpoint)
    validate_manifest(manifest, store.url(MANIFEST_NAME))
    store.write_bytes(TIMM_INFO_NAME, timm_info(manifest))
    store.write_bytes(MANIFEST_NAME, dumps_canonical(manifest).encode())  # last: every shard it lists is done
    t = manifest["totals"]
    print(f"wrote {t['shards']} shards, {t['samples']} samples ({t['skipped']} skipped) "
          f"to {store.location}; check them with: python -m manifests verify {store.location}")
    return store.location
