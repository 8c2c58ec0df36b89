"""One training run: data, model, phases (repainted shards, then originals), checkpoints, metrics."""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import timm
import torch
import torchvision
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from manifests import decode_image, verify_shard_set
from manifests.manifest import atomic_write_bytes

from .checkpoint import load_checkpoint, restore_rng_states, save_checkpoint
from .distributed import DistInfo, all_reduce_max, all_reduce_sum, barrier, cleanup, init_distributed
from .engine import EpochStats, StepContext, evaluate, train_one_epoch
from .stream import EvalStream, ShardSet, TrainStream, open_shard_set

log = logging.getLogger("train")
PHASES = ("train", "finetune")  # repainted variants + mixing, then originals only
METRIC_FIELDS = ("phase", "epoch", "train_loss", "val_loss", "top1", "top5", "lr", "images_per_s",
                 "steps_min", "steps_max", "skipped_steps", "bad_samples")


class _SafeImageFolder(Dataset):
    """An ImageFolder read with the contract's safe decode; yields (image, target, 0)."""

    def __init__(self, root: str, transform, classes: list[str]):
        self.folder = torchvision.datasets.ImageFolder(root, transform=transform, loader=self._load)
        if classes and self.folder.classes != classes:
            raise ValueError(f"{root}: classes {self.folder.classes} differ from the model's {classes}")

    @staticmethod
    def _load(path: str):
        with open(path, "rb") as f:
            return decode_image(f.read(), path).image

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        image, target = self.folder[index]
        return image, target, 0


def _is_shard_set(path: str) -> bool:
    return path.startswith(("http://", "https://")) or path.endswith(".json") or (Path(path) / "manifest.json").exists()


def build_val_loader(args, dist: DistInfo, classes: list[str]) -> DataLoader:
    transform = create_transform(args.img_size, is_training=False, crop_pct=1.0)
    if _is_shard_set(args.val):
        val_set = open_shard_set(args.val)
        if classes and val_set.classes != classes:
            raise ValueError(f"{args.val}: classes {val_set.classes} differ from the model's {classes}")
        dataset = EvalStream(val_set, transform, dist.rank, dist.world, args.max_bad)
    else:
        folder = _SafeImageFolder(args.val, transform, classes)
        dataset = Subset(folder, range(dist.rank, len(folder), dist.world))  # each image exactly once
    return DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)


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
    return ShardSet(kept, shard_set.classes, shard_set.variants, shard_set.location)


def _make_mixer(args, num_classes: int):
    if args.mix == "sage":
        from .sage import SageMix

        return SageMix(num_classes=num_classes, alpha=args.sage_alpha, upper_lambda=args.upper_lambda,
                       rand_pos=args.rand_pos, label_smoothing=args.smoothing, generator=torch.Generator())
    if args.mix in ("mixup", "cutmix"):
        mixup, cutmix = (args.mixup_alpha, 0.0) if args.mix == "mixup" else (0.0, args.cutmix_alpha)
        return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=args.smoothing, num_classes=num_classes)
    return None


def _phase_context(args, phase: str, model, ddp_model, dist: DistInfo, steps: int, num_classes: int) -> StepContext:
    """A fresh optimizer and LR schedule per phase: fine-tuning starts its own schedule."""
    epochs = args.epochs if phase == "train" else args.finetune_epochs
    lr = args.lr if phase == "train" else (args.finetune_lr or args.lr / 10)
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum)
    scheduler, _ = create_scheduler_v2(optimizer, sched=args.sched, num_epochs=max(epochs, 1),
                                       warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr,
                                       min_lr=args.min_lr, step_on_epochs=False, updates_per_epoch=steps)
    mixer = _make_mixer(args, num_classes)
    criterion = SoftTargetCrossEntropy() if mixer is not None else LabelSmoothingCrossEntropy(args.smoothing)
    scaler = torch.amp.GradScaler("cuda") if args.amp else None
    return StepContext(model=ddp_model, criterion=criterion, optimizer=optimizer, scheduler=scheduler,
                       device=dist.device, mix=args.mix, mixer=mixer, update_ratio=args.update_ratio,
                       num_classes=num_classes, seed=args.seed, rank=dist.rank, scaler=scaler,
                       channels_last=args.channels_last)


def _log_tensorboard(out: Path, row: dict, global_epoch: int) -> None:
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(out / "tb")) as writer:
        for name in ("train_loss", "val_loss", "top1", "top5", "lr", "images_per_s"):
            value = row.get(name)
            if isinstance(value, (int, float)) and value == value:  # skip NaN (no validation set)
                writer.add_scalar(f"{row['phase']}/{name}", value, global_epoch)


def _write_metrics(out: Path, row: dict) -> None:
    path = out / "metrics.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _epoch_row(phase: str, epoch: int, stats: EpochStats, lr: float, val: dict, dist: DistInfo) -> dict:
    loss_sum, steps, images, skipped, bad, seconds = all_reduce_sum(
        [stats.loss_sum, stats.steps, stats.images, stats.skipped_steps, stats.bad_samples, stats.seconds],
        dist.device)
    ran = stats.steps + stats.skipped_steps
    most, fewest = all_reduce_max([ran, -ran], dist.device)
    return {"phase": phase, "epoch": epoch, "train_loss": round(loss_sum / max(steps, 1), 6),
            "val_loss": round(val.get("val_loss", float("nan")), 6), "top1": round(val.get("top1", float("nan")), 4),
            "top5": round(val.get("top5", float("nan")), 4), "lr": lr,
            "images_per_s": round(images / max(seconds / dist.world, 1e-9), 2),
            "steps_min": int(-fewest), "steps_max": int(most), "skipped_steps": int(skipped), "bad_samples": int(bad)}


def run(args: argparse.Namespace) -> dict:
    dist = init_distributed(force_cpu=args.cpu)
    use_cuda = dist.device.type == "cuda"
    args.amp = use_cuda if args.amp is None else (args.amp and use_cuda)
    args.channels_last = use_cuda if args.channels_last is None else args.channels_last
    logging.basicConfig(level=logging.INFO if dist.is_main else logging.WARNING,
                        format=f"%(asctime)s rank{dist.rank} %(name)s %(message)s")
    out = Path(args.out)
    try:
        if args.eval_only:
            return _evaluate_checkpoint(args, dist)
        return _train(args, dist, out)
    finally:
        cleanup()


def _train(args, dist: DistInfo, out: Path) -> dict:
    torch.manual_seed(args.seed)
    shard_set = open_shard_set(args.shards)
    shard_set = _verified(shard_set, dist) if args.verify else shard_set
    num_classes = len(shard_set.classes)
    if num_classes < 2:
        raise ValueError(f"{args.shards}: the manifest lists {num_classes} classes; a classifier needs >= 2")
    args.num_classes, args.classes = num_classes, shard_set.classes
    steps = shard_set.samples // (dist.world * args.batch_size)
    if steps == 0:
        raise ValueError(f"{args.shards}: {shard_set.samples} samples are fewer than one batch per rank "
                         f"({dist.world} x {args.batch_size})")
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "args.yaml", _yaml(vars(args)).encode())
    barrier()

    model = timm.create_model(args.model, pretrained=False, num_classes=num_classes).to(dist.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp_model = DistributedDataParallel(model) if dist.world > 1 else model
    ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
    train_tf = create_transform(args.img_size, is_training=True, scale=tuple(args.scale), color_jitter=0.0)
    val_loader = build_val_loader(args, dist, shard_set.classes) if args.val else None

    state = load_checkpoint(out / "last.pth") if args.resume and (out / "last.pth").exists() else None
    position = state["position"] if state else {"phase": 0, "epoch": 0, "step": 0}
    if state:
        model.load_state_dict(state["model"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        log.info("resuming from %s at %s", out / "last.pth", position)
    val: dict = {}
    for phase_index in range(position["phase"], len(PHASES)):
        phase = PHASES[phase_index]
        epochs = args.epochs if phase == "train" else args.finetune_epochs
        ctx = _phase_context(args, phase, model, ddp_model, dist, steps, num_classes)
        ctx.ema = ema
        if state and phase_index == position["phase"]:
            ctx.optimizer.load_state_dict(state["optimizer"])
            ctx.scheduler.load_state_dict(state["scheduler"])
            ctx.num_updates = state["num_updates"]
            if ctx.scaler is not None and state.get("scaler"):
                ctx.scaler.load_state_dict(state["scaler"])
            restore_rng_states(state["rng"])
        first_epoch = position["epoch"] if phase_index == position["phase"] else 0
        stream = TrainStream(shard_set, train_tf, args.batch_size, steps, dist.rank, dist.world, args.seed,
                             args.orig_prob, use_variants=(phase == "train"), max_bad=args.max_bad)
        for epoch in range(first_epoch, epochs):
            start_step = position["step"] if (state and phase_index == position["phase"]
                                              and epoch == position["epoch"]) else 0
            epoch_key = phase_index * 100_000 + epoch
            stream.set_epoch(epoch_key, start_step)
            loader = DataLoader(stream, batch_size=args.batch_size, num_workers=args.workers,
                                pin_memory=dist.device.type == "cuda")

            def checkpoint(step: int, phase_index=phase_index, epoch=epoch, ctx=ctx) -> None:
                if args.checkpoint_every and step % args.checkpoint_every == 0 and step < steps:
                    _save(out, args, dist, model, ema, ctx, {"phase": phase_index, "epoch": epoch, "step": step})

            stats = train_one_epoch(ctx, loader, epoch_key, start_step, steps, on_step=checkpoint,
                                    progress=args.progress and dist.is_main)
            val = evaluate(ema.module if ema is not None else model, val_loader, dist.device,
                           num_classes) if val_loader is not None else {}
            row = _epoch_row(phase, epoch, stats, ctx.optimizer.param_groups[0]["lr"], val, dist)
            nxt = {"phase": phase_index, "epoch": epoch + 1, "step": 0}
            if epoch + 1 == epochs:
                nxt = {"phase": phase_index + 1, "epoch": 0, "step": 0}
            _save(out, args, dist, model, ema, ctx, nxt)
            if dist.is_main:
                _write_metrics(out, row)
                _log_tensorboard(out, row, global_epoch=phase_index * 10_000 + epoch)
                log.info("%s", row)
        state = None
    summary = {"top1": val.get("top1"), "top5": val.get("top5"), "val_samples": val.get("val_samples"),
               "model": args.model, "mix": args.mix, "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
               "world_size": dist.world, "batch_size": args.batch_size, "steps_per_epoch": steps,
               "train_samples": shard_set.samples, "classes": shard_set.classes, "settings": vars(args)}
    if dist.is_main:
        atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode())
    return summary


def _save(out: Path, args, dist: DistInfo, model, ema, ctx: StepContext, position: dict) -> None:
    if not dist.is_main:
        return
    save_checkpoint(out / "last.pth", {
        "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
        "optimizer": ctx.optimizer.state_dict(), "scheduler": ctx.scheduler.state_dict(),
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
        "num_updates": ctx.num_updates, "position": position, "classes": list(args.classes),
        "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))},
    })


def _evaluate_checkpoint(args, dist: DistInfo) -> dict:
    state = load_checkpoint(args.checkpoint)
    weights = state.get("ema") or state["model"]
    num_classes = state["args"]["num_classes"]
    model = timm.create_model(state["args"]["model"], pretrained=False, num_classes=num_classes)
    model.load_state_dict(weights)
    model.to(dist.device)
    args.img_size = args.img_size or state["args"]["img_size"]
    metrics = evaluate(model, build_val_loader(args, dist, state["classes"]), dist.device, num_classes)
    if dist.is_main:
        print(json.dumps({"checkpoint": str(args.checkpoint), **metrics}, sort_keys=True))
    return metrics


def _yaml(values: dict) -> str:
    import yaml

    return yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}, sort_keys=True)

