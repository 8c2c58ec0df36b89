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
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import ray
import torch

from manifests.manifest import atomic_write_bytes, dumps_canonical

from ..demo_data import MAX_OBJECTS
from ..job_config import GenerateConfig
from ..records import RecordSettings
from ..segment import Segmenter
from ..shards import ShardPlan, write_shard
from ..sources import Record, Source
from ..tasks import node_origin
from .config import RepainterConfig
from .data import RepaintSet, build_repaint_set
from .paint import Repaint, load_repainter
from .train import TrainSettings, train_repainter

log = logging.getLogger("pipeline")
SUMMARY = "summary.json"
REPAINTER_FILE = "repainter/repainter.pt"  # in the shard set; the manifest names it
CHUNK = 64  # records per data-preparation task


def label_channel_count(segmenter: str, segmentation, source: Source) -> int:
    """One-hot channels + boundary: the config's default for fh (area-ranked segments), one per class otherwise."""
    if segmenter == "coco":
        return len(source.classes) + 2  # background + categories + boundary
    if segmenter.startswith("deeplab:"):
        return segmentation.num_classes + 1
    if segmenter == "demo":
        return MAX_OBJECTS + 2  # background + one channel per object + boundary
    return RepainterConfig.label_channels


@dataclass(frozen=True)
class RepaintPlan:
    """What the repainting steps of one job use, read once from its flags and its source: the networks'
    config, the training's settings, and the painting actors' arguments. The steps below take this,
    not the job's whole config."""

    model: RepainterConfig
    training: TrainSettings
    images: int  # --repainter-images: the first records of the job's order
    segmenter: str  # the spec as given (it names the training in its identity)
    segmentation: Segmenter  # the spec parsed once
    initial: str | None  # --repainter: weights to start from (steps 0: to paint with as is)
    painting: dict  # Repaint's arguments but the checkpoint
    paint_batch: int
    painters: int  # actors, one CPU each
    gpus: float  # per training worker and per actor
    max_retries: int

    @classmethod
    def from_config(cls, cfg: GenerateConfig, source: Source) -> RepaintPlan:
        steps = cfg.repainter_steps
        model = RepainterConfig(
            label_channels=label_channel_count(cfg.segmenter, cfg.segmentation, source),
            num_classes=max(1, len(source.classes)), multilabel=source.kind == "coco", task_model=cfg.task_model,
            task_weight=cfg.task_weight if cfg.task_loss else 0.0, norm=cfg.repainter_norm,
            task_warmup=min(cfg.task_warmup, steps), keep_prob=cfg.train_region_keep_prob,
            train_latent=cfg.train_variant_latent, structure=cfg.repainter_structure)
        training = TrainSettings(steps=steps, batch_size=cfg.repainter_batch, size=cfg.repaint_size,
                                 checkpoint_every=min(cfg.repainter_checkpoint_every, max(1, steps)),
                                 workers=cfg.train_workers, use_gpu=cfg.gpus > 0, seed=cfg.seed,
                                 max_failures=cfg.max_retries, progress=cfg.progress)
        painting = {"segmenter": cfg.segmentation, "variants": cfg.variants, "seed": cfg.seed,
                    "repaint_size": cfg.repaint_size, "fraction": cfg.repaint_fraction,
                    "latent": cfg.variant_latent, "keep_prob": cfg.region_keep_prob,
                    "hue": cfg.variant_hue, "detail": cfg.variant_detail}
        return cls(model=model, training=training, images=cfg.repainter_images, segmenter=cfg.segmenter,
                   segmentation=cfg.segmentation, initial=cfg.repainter, painting=painting,
                   paint_batch=cfg.paint_batch, painters=cfg.workers, gpus=cfg.gpus, max_retries=cfg.max_retries)

    def identity(self) -> str:
        """What decides the weights; not where or how fast they are computed."""
        how = ("cpus_per_worker", "max_failures", "progress", "checkpoint_every")
        training = {k: v for k, v in asdict(self.training).items() if k not in how}
        initial = hashlib.sha256(Path(self.initial).read_bytes()).hexdigest() if self.initial else None
        ident = {"model": asdict(self.model), "training": training, "images": self.images,
                 "segmenter": self.segmenter, "initial": initial}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def training_set(plan: RepaintPlan, records: list[Record], settings: RecordSettings) -> tuple[RepaintSet, RepaintSet]:
    """Decode + segment the first `--repainter-images` records on Ray tasks; hold 10% out."""
    chosen = records[: plan.images]
    build = ray.remote(num_cpus=1, max_retries=plan.max_retries)(build_repaint_set)
    size, classes, multilabel = plan.training.size, plan.model.num_classes, plan.model.multilabel
    parts = ray.get([build.remote(chosen[i:i + CHUNK], settings, plan.segmentation, size, classes, multilabel)
                     for i in range(0, len(chosen), CHUNK)])
    data = RepaintSet.concat(parts)
    if data.skipped:
        log.warning("repainter training set: %d of %d images skipped (the manifest lists every skip)",
                    len(data.skipped), len(chosen))
    if len(data) < 4:
        raise ValueError(f"the repainter needs at least 4 readable images, got {len(data)}")
    return data.split(max(1, min(256, len(data) // 10)))


def obtain_repainter(plan: RepaintPlan, records: list[Record], settings: RecordSettings, work: Path,
                     start_ray: Callable[[], None]) -> tuple[Path, dict]:
    """The repainter checkpoint the shards are painted with, and what the manifest says about it.
    It trains in `work/repainter/` (the shard-set folder itself, or `--work` for an object store)."""
    if plan.training.steps == 0:
        _, _, _, info = load_repainter(plan.initial)
        return Path(plan.initial).resolve(), {**info, "trained_by_this_job": False}
    folder = work / Path(REPAINTER_FILE).parent
    t = replace(plan.training)  # cpus_per_worker is decided below, from the cluster
    identity = plan.identity()
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
        data, val = training_set(plan, records, settings)
        log.info("repainter: training %d steps on %d images (%d held out) at %dpx, %d worker(s)",
                 t.steps, len(data), len(val), t.size, t.workers)
        _, metrics = train_repainter(plan.model, t, data, val, folder, initial=plan.initial)
        summary = {"identity": identity, "step": t.steps, "metrics": metrics, "training": asdict(t),
                   "images": len(data), "held_out": len(val), "skipped": len(data.skipped)}
        atomic_write_bytes(summary_file, dumps_canonical(summary).encode())
    path = folder / Path(REPAINTER_FILE).name
    _, _, _, info = load_repainter(path)
    return path, {**info, "trained_by_this_job": True, "training": summary}


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


def start_painters(plan: RepaintPlan, checkpoint: str | Path) -> list:
    """One painting actor per `--workers`, each with the checkpoint loaded once."""
    actor = ray.remote(num_cpus=1, num_gpus=plan.gpus, max_restarts=plan.max_retries,
                       max_task_retries=plan.max_retries)(ShardPainter)
    args = {"checkpoint": str(checkpoint), **plan.painting}
    return [actor.remote(args, plan.gpus > 0, plan.paint_batch) for _ in range(plan.painters)]
