"""The training and evaluation loops (torchvision references' `engine.py` split)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from manifests.contract import derive_seed

from .distributed import all_finite

log = logging.getLogger("train.engine")


@dataclass
class StepContext:
    """Everything one optimisation step needs, built once per phase by the runner."""

    model: torch.nn.Module  # DDP-wrapped where distributed
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a timm scheduler (step_update per step)
    device: torch.device
    num_classes: int
    seed: int
    rank: int
    criterion: Callable | None = None  # soft-target loss when mixing, else hard-label loss
    mix: str = "none"  # none | mixup | cutmix | sage
    mixer: Callable | None = None
    update_ratio: float = 0.0
    sage_loss: str = "ce"  # official: BCE on the softmax for both SAGE passes (train/sage.py)
    loss_fn: Callable | None = None  # (model, x, target) -> loss, for models that compute their own loss
    scaler: torch.amp.GradScaler | None = None
    ema: Any = None
    channels_last: bool = False
    prepare: Callable | None = None  # on the device, per batch: e.g. uint8 -> normalised float
    num_updates: int = 0


@dataclass
class EpochStats:
    loss_sum: float = 0.0
    steps: int = 0
    skipped_steps: int = 0
    bad_samples: int = 0
    images: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, dict):  # detection targets
        return {k: to_device(v, device) for k, v in value.items()}
    return value.to(device, non_blocking=True)


def _seed_step(ctx: StepContext, epoch_key: int, step: int) -> None:
    # Mixing and dropout draws come from (seed, epoch, step, rank), not from history,
    # so a run resumed at step k draws exactly what the uninterrupted run drew there.
    seed = derive_seed(ctx.seed, epoch_key, step, ctx.rank, "step")
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # timm's Mixup draws from numpy's global generator
    if ctx.mixer is not None and hasattr(ctx.mixer, "generator") and ctx.mixer.generator is not None:
        ctx.mixer.generator.manual_seed(seed)


def _autocast(ctx: StepContext):
    return torch.autocast("cuda", dtype=torch.float16) if ctx.scaler is not None else nullcontext()


def _forward_backward(ctx: StepContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradients of one step; returns the loss(es) whose finiteness decides the step."""
    if ctx.mix == "sage":
        from .sage import sage_forward_backward

        out = sage_forward_backward(ctx.model, ctx.criterion, x, y, ctx.mixer, ctx.update_ratio,
                                    ctx.num_classes, scaler=ctx.scaler, autocast=lambda: _autocast(ctx),
                                    loss=ctx.sage_loss)
        return torch.tensor([out["loss_clean"], out["loss_mix"]])
    if ctx.loss_fn is not None:
        with _autocast(ctx):
            loss = ctx.loss_fn(ctx.model, x, y)
        (ctx.scaler.scale(loss) if ctx.scaler is not None else loss).backward()
        return loss.detach().reshape(1)
    target = y
    if ctx.mixer is not None:
        x, target = ctx.mixer(x, y)
    with _autocast(ctx):
        loss = ctx.criterion(ctx.model(x), target)
    (ctx.scaler.scale(loss) if ctx.scaler is not None else loss).backward()
    return loss.detach().reshape(1)


def train_one_epoch(ctx: StepContext, loader, epoch_key: int, start_step: int, total_steps: int,
                    on_step: Callable[[int], None] | None = None, progress: bool = True) -> EpochStats:
    ctx.model.train()
    stats = EpochStats()
    start = time.perf_counter()
    bar = tqdm(total=total_steps, initial=start_step, disable=not progress, unit="step", leave=False)
    for step, (x, y, bad) in enumerate(loader, start=start_step):
        _seed_step(ctx, epoch_key, step)
        x = x.to(ctx.device, non_blocking=True)
        x = ctx.prepare(x) if ctx.prepare is not None else x
        x = x.contiguous(memory_format=torch.channels_last) if ctx.channels_last else x
        y = to_device(y, ctx.device)
        losses = _forward_backward(ctx, x, y)
        # Every rank ran the same backward passes; skip the update together if any loss is bad.
        if all_finite(losses.to(ctx.device)):
            if ctx.scaler is not None:
                ctx.scaler.step(ctx.optimizer)
                ctx.scaler.update()
            else:
                ctx.optimizer.step()
            ctx.num_updates += 1
            if ctx.ema is not None:
                ctx.ema.update(ctx.model, step=ctx.num_updates)
            stats.loss_sum += float(losses[-1])
            stats.steps += 1
        else:
            stats.skipped_steps += 1
            log.warning("non-finite loss at step %d on some rank; all ranks skip this update", step)
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.scheduler.step_update(num_updates=ctx.num_updates)
        stats.images += x.shape[0]
        stats.bad_samples += int(bad.sum())
        bar.update(1)
        bar.set_postfix(loss=f"{float(losses[-1]):.3f}", lr=f"{ctx.optimizer.param_groups[0]['lr']:.2e}")
        if on_step is not None:
            on_step(step + 1)
    bar.close()
    stats.seconds = time.perf_counter() - start
    return stats
