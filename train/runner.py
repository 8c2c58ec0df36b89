"""One training run, for any task: phases (repainted shards, then originals), checkpoints, metrics.

A task (train/classification.py, train/detection.py) supplies the model, the sample decoders, the
loss and the evaluation; everything else (streaming, DDP, phases, resume, logs) is shared here.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from manifests import verify_shard_set
from manifests.manifest import atomic_write_bytes

from .checkpoint import load_checkpoint, restore_rng_states, save_checkpoint
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_max, all_reduce_sum, barrier, cleanup, init_distributed
from .engine import EpochStats, StepContext, train_one_epoch
from .stream import ShardSet, TrainStream, open_shard_set

log = logging.getLogger("train")
PHASES = ("train", "finetune")  # repainted variants (+ mixing), then originals only
RUN_FIELDS = ("phase", "epoch", "train_loss", "lr", "images_per_s", "steps_min", "steps_max", "skipped_steps",
              "bad_samples")


class Task(Protocol):
    name: str
    metric_names: tuple[str, ...]
    summary_metrics: tuple[str, ...]

    def labels(self, shard_set: ShardSet) -> list[str]: ...
    def build_model(self, args, num_classes: int) -> torch.nn.Module: ...
    def train_decoder(self, args, labels: list[str] | None = None) -> Any: ...
    def phase_parts(self, args, num_classes: int) -> dict: ...
    def val_loader(self, args, dist: DistInfo, labels: list[str]) -> DataLoader | None: ...
    def shifted_val_loaders(self, args, dist: DistInfo, labels: list[str]) -> dict[str, DataLoader]: ...
    def evaluate(self, model: torch.nn.Module, loader, dist: DistInfo, labels: list[str]) -> dict: ...


def cli_main(argv: list[str] | None, task: Task) -> int:
    """The trainers' entry point: parse flags for `task`, run, and turn bad input into one error line."""
    from .config import parse_args
    from .stream import TooManyBadSamples

    args = parse_args(argv, task=task.name)
    try:
        run(args, task)
    except (ValueError, FileNotFoundError, TooManyBadSamples) as exc:  # bad input: say what, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def run(args: TrainConfig, task: Task) -> dict:
    dist = init_distributed(force_cpu=args.cpu)
    use_cuda = dist.device.type == "cuda"
    args.amp = use_cuda if args.amp is None else (args.amp and use_cuda)
    args.channels_last = use_cuda if args.channels_last is None else args.channels_last
    logging.basicConfig(level=logging.INFO if dist.is_main else logging.WARNING,
                        format=f"%(asctime)s rank{dist.rank} %(name)s %(message)s")
    if dist.device.type == "cpu":
        _pick_threads(args)
    try:
        if args.eval_only:
            return _evaluate_checkpoint(args, dist, task)
        return _train(args, dist, Path(args.out), task)
    finally:
        cleanup()


def _pick_threads(args: TrainConfig) -> None:
    """Ranks x (threads + loader workers) should not oversubscribe the CPUs: that costs far more
    than it gains (OpenMP threads spin while they wait)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = args.threads or max(1, cpus // ranks_here - args.workers)
    torch.set_num_threads(threads)
    log.info("CPU: %d threads per rank (%s), %d loader workers, %d rank(s) on %d CPUs", threads,
             "--threads" if args.threads else "picked", args.workers, ranks_here, cpus)


def _verified(shard_set: ShardSet, dist: DistInfo) -> ShardSet:
    """With --verify: drop shards whose sha256/size/count disagree with the manifest (rank 0 checks)."""
    problems = [None]
    if dist.is_main:
        problems = [[str(p) for p in verify_shard_set(shard_set.location)]]
    if dist.world > 1:
        torch.distributed.broadcast_object_list(problems, src=0)
    bad_names = {line.split(":")[0] for line in problems[0]}
    for line in problems[0]:
        log.warning("--verify: %s", line)
    kept = [s for s in shard_set.shards if Path(s.url).name not in bad_names]
    if not kept:
        raise RuntimeError(f"{shard_set.location}: no shard passed verification")
    return ShardSet(kept, shard_set.classes, shard_set.variants, shard_set.location, shard_set.categories)


def _phase_context(args: TrainConfig, task: Task, phase: str, model, ddp_model, dist: DistInfo, steps: int,
                   num_classes: int) -> StepContext:
    """A fresh optimizer and LR schedule per phase: fine-tuning starts its own schedule."""
    epochs = args.epochs if phase == "train" else args.finetune_epochs
    lr = args.lr if phase == "train" else (args.finetune_lr or args.lr / 10)
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum)
    scheduler, _ = create_scheduler_v2(optimizer, sched=args.sched, num_epochs=max(epochs, 1),
                                       warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr,
                                       min_lr=args.min_lr, step_on_epochs=False, updates_per_epoch=steps)
    scaler = torch.amp.GradScaler("cuda") if args.amp else None
    parts = task.phase_parts(args, num_classes)
    return StepContext(model=ddp_model, optimizer=optimizer, scheduler=scheduler, device=dist.device,
                       num_classes=num_classes, seed=args.seed,
                       rank=dist.rank, scaler=scaler, channels_last=args.channels_last, **parts)


def _epoch_row(phase: str, epoch: int, stats: EpochStats, lr: float, val: dict, dist: DistInfo) -> dict:
    loss_sum, steps, images, skipped, bad, seconds = all_reduce_sum(
        [stats.loss_sum, stats.steps, stats.images, stats.skipped_steps, stats.bad_samples, stats.seconds],
        dist.device)
    ran = stats.steps + stats.skipped_steps
    most, fewest = all_reduce_max([ran, -ran], dist.device)
    return {"phase": phase, "epoch": epoch, "train_loss": round(loss_sum / max(steps, 1), 6), "lr": lr,
            "images_per_s": round(images / max(seconds / dist.world, 1e-9), 2), "steps_min": int(-fewest),
            "steps_max": int(most), "skipped_steps": int(skipped), "bad_samples": int(bad),
            **{k: round(v, 6) if isinstance(v, float) else v for k, v in val.items()}}


class EpochLog:
    """metrics.csv (appended, so a resumed run continues it) and one TensorBoard writer for the run."""

    def __init__(self, out: Path, fields: tuple[str, ...]):
        from tensorboardX import SummaryWriter

        self.path, self.fields = out / "metrics.csv", fields
        self.tb = SummaryWriter(str(out / "tb"))

    def write(self, row: dict, epochs_done: int) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)
        for name in self.fields[2:]:
            value = row.get(name)
            if isinstance(value, (int, float)) and value == value:  # skip NaN (no validation set)
                self.tb.add_scalar(f"{row['phase']}/{name}", value, epochs_done)
        self.tb.flush()
        log.info("%s", {k: row.get(k) for k in self.fields})

    def close(self) -> None:
        self.tb.close()


def epoch_key(phase_index: int, epoch: int) -> int:
    """The epoch's identity in every seed (stream order, variant choice, augmentation): unique per phase."""
    return phase_index * 100_000 + epoch


@dataclass
class Setup:
    """What every phase of a run shares: data, model, EMA, validation."""

    shard_set: ShardSet
    labels: list[str]
    steps: int  # optimizer steps per epoch, the same on every rank
    model: torch.nn.Module
    ddp_model: torch.nn.Module
    ema: ModelEmaV3 | None
    val_loader: DataLoader | None
    shifted: dict[str, DataLoader]  # --val-shift copies of the validation set, by metric suffix


def _setup(args: TrainConfig, dist: DistInfo, out: Path, task: Task) -> Setup:
    torch.manual_seed(args.seed)
    shard_set = open_shard_set(args.shards)
    shard_set = _verified(shard_set, dist) if args.verify else shard_set
    labels = task.labels(shard_set)
    if len(labels) < 1 or (task.name == "classification" and len(labels) < 2):
        raise ValueError(f"{args.shards}: the manifest lists {len(labels)} classes; too few for {task.name}")
    steps = shard_set.samples // (dist.world * args.batch_size)
    if steps == 0:
        raise ValueError(f"{args.shards}: {shard_set.samples} samples are fewer than one batch per rank "
                         f"({dist.world} x {args.batch_size})")
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "args.yaml", _yaml(dataclasses.asdict(args)).encode())
    barrier()
    model = task.build_model(args, len(labels)).to(dist.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp_model = DistributedDataParallel(model) if dist.world > 1 else model
    ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
    return Setup(shard_set, labels, steps, model, ddp_model, ema, task.val_loader(args, dist, labels),
                 task.shifted_val_loaders(args, dist, labels))


def _resume(args: TrainConfig, out: Path, setup: Setup) -> tuple[dict | None, dict]:
    """(the checkpoint to resume from or None, where to start); the weights are loaded here."""
    state = load_checkpoint(out / "last.pth") if args.resume and (out / "last.pth").exists() else None
    if state is None:
        return None, {"phase": 0, "epoch": 0, "step": 0}
    setup.model.load_state_dict(state["model"])
    if setup.ema is not None and state.get("ema"):
        setup.ema.load_state_dict(state["ema"])
    log.info("resuming from %s at %s", out / "last.pth", state["position"])
    return state, state["position"]


def _restore_phase(ctx: StepContext, state: dict) -> None:
    ctx.optimizer.load_state_dict(state["optimizer"])
    ctx.scheduler.load_state_dict(state["scheduler"])
    ctx.num_updates = state["num_updates"]
    if ctx.scaler is not None and state.get("scaler"):
        ctx.scaler.load_state_dict(state["scaler"])
    restore_rng_states(state["rng"])


def _train(args: TrainConfig, dist: DistInfo, out: Path, task: Task) -> dict:
    setup = _setup(args, dist, out, task)
    state, position = _resume(args, out, setup)
    shift_fields = tuple(f"top1_{name}" for name in setup.shifted)
    epoch_log = EpochLog(out, RUN_FIELDS + task.metric_names + shift_fields) if dist.is_main else None
    val: dict = {}
    try:
        for phase_index in range(position["phase"], len(PHASES)):
            resuming = state if state is not None and phase_index == position["phase"] else None
            val = _run_phase(args, dist, out, task, setup, phase_index, resuming, position, epoch_log) or val
            state = None
    finally:
        if epoch_log is not None:
            epoch_log.close()
    summary = {**{k: val.get(k) for k in task.summary_metrics + shift_fields}, "task": task.name, "model": args.model,
               "epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "world_size": dist.world,
               "batch_size": args.batch_size, "steps_per_epoch": setup.steps, "train_samples": setup.shard_set.samples,
               "classes": setup.labels, "settings": dataclasses.asdict(args)}
    if dist.is_main:
        atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode())
    return summary


def _run_phase(args: TrainConfig, dist: DistInfo, out: Path, task: Task, setup: Setup, phase_index: int,
               state: dict | None, position: dict, epoch_log: EpochLog | None) -> dict:
    """The epochs of one phase (from `position` when `state` resumes it); the last validation metrics."""
    phase = PHASES[phase_index]
    epochs = args.epochs if phase == "train" else args.finetune_epochs
    ctx = _phase_context(args, task, phase, setup.model, setup.ddp_model, dist, setup.steps, len(setup.labels))
    ctx.ema = setup.ema
    if state is not None:
        _restore_phase(ctx, state)
    decoder = task.train_decoder(args, setup.labels)
    stream = TrainStream(setup.shard_set, decoder, args.batch_size, setup.steps, dist.rank, dist.world, args.seed,
                         args.orig_prob, use_variants=(phase == "train"), max_bad=args.max_bad)
    save = functools.partial(_save, out, args, setup.labels, dist, setup.model, setup.ema, ctx)
    val: dict = {}
    for epoch in range(position["epoch"] if state is not None else 0, epochs):
        start_step = position["step"] if state is not None and epoch == position["epoch"] else 0
        stream.set_epoch(epoch_key(phase_index, epoch), start_step)
        loader = DataLoader(stream, batch_size=args.batch_size, num_workers=args.workers,
                            pin_memory=dist.device.type == "cuda")

        def checkpoint(step: int, epoch: int = epoch) -> None:
            if args.checkpoint_every and step % args.checkpoint_every == 0 and step < setup.steps:
                save({"phase": phase_index, "epoch": epoch, "step": step})

        stats = train_one_epoch(ctx, loader, epoch_key(phase_index, epoch), start_step, setup.steps,
                                on_step=checkpoint, progress=args.progress and dist.is_main)
        done = epoch + 1 == epochs
        evaluate_now = setup.val_loader is not None and (done or (epoch + 1) % args.eval_every == 0)
        eval_model = setup.ema.module if setup.ema is not None else setup.model
        val = {}
        if evaluate_now:
            val = _evaluate_all(task, eval_model, setup.val_loader, setup.shifted, dist, setup.labels)
        row = _epoch_row(phase, epoch, stats, ctx.optimizer.param_groups[0]["lr"], val, dist)
        save({"phase": phase_index + done, "epoch": 0 if done else epoch + 1, "step": 0})
        if epoch_log is not None:
            epoch_log.write(row, epochs_done=(args.epochs if phase_index else 0) + epoch + 1)
    return val


def _save(out: Path, args: TrainConfig, labels: list[str], dist: DistInfo, model, ema, ctx: StepContext,
          position: dict) -> None:
    if not dist.is_main:
        return
    save_checkpoint(out / "last.pth", {
        "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
        "optimizer": ctx.optimizer.state_dict(), "scheduler": ctx.scheduler.state_dict(),
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
        "num_updates": ctx.num_updates, "position": position, "classes": list(labels),
        "args": {**{k: v for k, v in dataclasses.asdict(args).items() if isinstance(v, (int, float, str, bool,
                                                                                      type(None)))},
                 "num_classes": len(labels)},
    })


def _evaluate_all(task: Task, model, loader, shifted: dict[str, DataLoader], dist: DistInfo, labels: list[str]) -> dict:
    """Clean metrics, plus `top1_<shift>` for every shifted copy of the validation set."""
    metrics = task.evaluate(model, loader, dist, labels)
    for name, shifted_loader in shifted.items():
        metrics[f"top1_{name}"] = task.evaluate(model, shifted_loader, dist, labels)["top1"]
    return metrics


def _evaluate_checkpoint(args: TrainConfig, dist: DistInfo, task: Task) -> dict:
    state = load_checkpoint(args.checkpoint)
    args = dataclasses.replace(args, model=state["args"]["model"], img_size=state["args"]["img_size"])
    model = task.build_model(args, state["args"]["num_classes"])
    model.load_state_dict(state.get("ema") or state["model"])
    model.to(dist.device)
    labels = state["classes"]
    metrics = _evaluate_all(task, model, task.val_loader(args, dist, labels),
                            task.shifted_val_loaders(args, dist, labels), dist, labels)
    if dist.is_main:
        print(json.dumps({"checkpoint": str(args.checkpoint), **metrics}, sort_keys=True))
    return metrics


def _yaml(values: dict) -> str:
    import yaml

    return yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}, sort_keys=True)
