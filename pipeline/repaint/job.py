"""The repainter's part of the Ray job: its training set (Ray tasks), its training (Ray Train), and the
actors that write shards with it (one model load per actor).

`obtain_repainter` is idempotent: a finished training in `<out>/repainter/` is reused when its
settings match, an interrupted one resumes from its last checkpoint, and a `--repainter CKPT` with
`--repainter-steps 0` is used as is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import ray
import torch

from manifests.manifest import atomic_write_bytes, dumps_canonical

from ..demo_data import MAX_OBJECTS
from ..job_config import GenerateConfig
from ..records import RecordSettings
from ..shards import ShardPlan, write_shard
from ..sources import Record, Source
from .config import RepainterConfig
from .data import RepaintSet, build_repaint_set
from .paint import Repaint, load_repainter
from .train import TrainSettings, train_repainter

log = logging.getLogger("pipeline")
SUMMARY = "summary.json"
REPAINTER_FILE = "repainter/repainter.pt"  # in the shard set; the manifest names it
CHUNK = 64  # records per data-preparation task


def label_channel_count(cfg: GenerateConfig, source: Source) -> int:
    """One-hot channels + boundary: the config's default for fh (area-ranked segments), one per class otherwise."""
    if cfg.segmenter == "coco":
        return len(source.classes) + 2  # background + categories + boundary
    if cfg.segmenter.startswith("deeplab:"):
        return cfg.segmentation.num_classes + 1
    if cfg.segmenter == "demo":
        return MAX_OBJECTS + 2  # background + one channel per object + boundary
    return RepainterConfig.label_channels


def model_config(cfg: GenerateConfig, source: Source) -> RepainterConfig:
    return RepainterConfig(label_channels=label_channel_count(cfg, source), num_classes=max(1, len(source.classes)),
                           multilabel=source.kind == "coco", task_model=cfg.task_model,
                           task_weight=cfg.task_weight if cfg.task_loss else 0.0, norm=cfg.repainter_norm,
                           task_warmup=min(cfg.task_warmup, cfg.repainter_steps), keep_prob=cfg.train_region_keep_prob)


def training_set(cfg: GenerateConfig, source: Source, records: list[Record], settings: RecordSettings,
                 size: int) -> tuple[RepaintSet, RepaintSet]:
    """Decode + segment the first `--repainter-images` records on Ray tasks; hold 10% out."""
    chosen = records[: cfg.repainter_images]
    segmenter = cfg.segmentation
    build = ray.remote(num_cpus=1, max_retries=cfg.max_retries)(build_repaint_set)
    multilabel, classes = source.kind == "coco", max(1, len(source.classes))
    parts = ray.get([build.remote(chosen[i:i + CHUNK], settings, segmenter, size, classes, multilabel)
                     for i in range(0, len(chosen), CHUNK)])
    data = RepaintSet.concat(parts)
    if data.skipped:
        log.warning("repainter training set: %d of %d images skipped (the manifest lists every skip)",
                    len(data.skipped), len(chosen))
    if len(data) < 4:
        raise ValueError(f"the repainter needs at least 4 readable images, got {len(data)}")
    return data.split(max(1, min(256, len(data) // 10)))


def _training_identity(cfg: GenerateConfig, model: RepainterConfig, t: TrainSettings, initial: str | None) -> str:
    # What decides the weights; not where or how fast they are computed.
    how = ("cpus_per_worker", "max_failures", "progress", "checkpoint_every")
    training = {k: v for k, v in asdict(t).items() if k not in how}
    ident = {"model": asdict(model), "training": training, "images": cfg.repainter_images,
             "segmenter": cfg.segmenter,
             "initial": hashlib.sha256(Path(initial).read_bytes()).hexdigest() if initial else None}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def obtain_repainter(cfg: GenerateConfig, source: Source, records: list[Record], settings: RecordSettings,
                     work: Path, start_ray: Callable[[], None]) -> tuple[Path, dict]:
    """The repainter checkpoint the shards are painted with, and what the manifest says about it.
    It trains in `work/repainter/` (the shard-set folder itself, or `--work` for an object store)."""
    if cfg.repainter_steps == 0:
        _, _, _, info = load_repainter(cfg.repainter)
        return Path(cfg.repainter).resolve(), {**info, "trained_by_this_job": False}
    folder = work / Path(REPAINTER_FILE).parent
    model = model_config(cfg, source)
    t = TrainSettings(steps=cfg.repainter_steps, batch_size=cfg.repainter_batch, size=cfg.repaint_size,
                      checkpoint_every=min(cfg.repainter_checkpoint_every, cfg.repainter_steps),
                      workers=cfg.train_workers, use_gpu=cfg.gpus > 0, seed=cfg.seed, max_failures=cfg.max_retries,
                      progress=cfg.progress)
    identity = _training_identity(cfg, model, t, cfg.repainter)
    summary_file = folder / SUMMARY
    if summary_file.exists() and json.loads(summary_file.read_text()).get("identity") == identity:
        summary = json.loads(summary_file.read_text())
        log.info("repainter: reusing the finished training in %s (step %d)", folder, summary["step"])
    else:
        start_ray()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if cpus < t.workers:  # Ray Train would wait for them forever
            raise ValueError(f"--train-workers {t.workers} needs {t.workers} CPUs; the Ray cluster has {cpus}")
        t.cpus_per_worker = max(1, min(8, cpus // t.workers))
        data, val = training_set(cfg, source, records, settings, cfg.repaint_size)
        log.info("repainter: training %d steps on %d images (%d held out) at %dpx, %d worker(s)",
                 t.steps, len(data), len(val), t.size, t.workers)
        _, metrics = train_repainter(model, t, data, val, folder, initial=cfg.repainter)
        summary = {"identity": identity, "step": t.steps, "metrics": metrics, "training": asdict(t),
                   "images": len(data), "held_out": len(val), "skipped": len(data.skipped)}
        atomic_write_bytes(summary_file, dumps_canonical(summary).encode())
    path = folder / Path(REPAINTER_FILE).name
    _, _, _, info = load_repainter(path)
    return path, {**info, "trained_by_this_job": True, "training": summary}


def node_origin() -> dict:
    """Which Ray node and host a shard was written on, for its done-record. Here because this module
    and pipeline/job.py are the ones allowed to import ray; the manifest never holds it (node ids
    change from run to run)."""
    return {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}


class ShardPainter:
    """A Ray actor holding one loaded repainter: it paints and writes whole shards with it."""

    def __init__(self, repaint_args: dict, use_gpu: bool, paint_batch: int = 1):
        torch.set_num_threads(1)  # one CPU per actor; also keeps CPU results independent of the host
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.repaint = Repaint(**repaint_args, device=device)
        self.paint_batch = paint_batch

    def write(self, plan: ShardPlan, records: list[Record], settings: RecordSettings, out_dir: str,
              fingerprint: str) -> dict:
        return write_shard(plan, records, settings, out_dir, fingerprint, self.repaint, origin=node_origin(),
                           paint_batch=self.paint_batch)


def start_painters(cfg: GenerateConfig, checkpoint: Path) -> list:
    actor = ray.remote(num_cpus=1, num_gpus=cfg.gpus, max_restarts=cfg.max_retries,
                       max_task_retries=cfg.max_retries)(ShardPainter)
    args = {"checkpoint": str(checkpoint), "segmenter": cfg.segmentation, "variants": cfg.variants,
            "seed": cfg.seed, "repaint_size": cfg.repaint_size, "fraction": cfg.repaint_fraction,
            "latent": cfg.variant_latent, "keep_prob": cfg.region_keep_prob,
            "hue": cfg.variant_hue, "detail": cfg.variant_detail}
    return [actor.remote(args, cfg.gpus > 0, cfg.paint_batch) for _ in range(cfg.workers)]
