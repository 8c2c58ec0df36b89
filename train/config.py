"""The trainers' settings: one dataclass per command (`manifests.flags`); a YAML file (`--config`)
can set their defaults.

`TrainConfig` holds what both trainers share (data, optimisation, run); `ClassifyConfig` adds mixing
and `DetectConfig` EfficientDet's box budget, each with its own defaults. Names follow timm's
`train.py` where it has one. What a run saves (`args.yaml`, the checkpoint) is `asdict(config)`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import yaml

from manifests.flags import build_parser, flag, invalid_flags

MIX_MODES = ("none", "mixup", "cutmix", "sage")
DATA, MODEL, MIX, RUN = "data", "model and optimisation", "mixing", "run"


def _positive(v) -> bool:
    return v > 0


def _not_negative(v) -> bool:
    return v >= 0


@dataclass
class TrainConfig:
    """The flags both trainers share; subclasses set the task, its description and its defaults."""

    task: ClassVar[str] = ""
    description: ClassVar[str] = ""

    config: str | None = flag(None, "YAML file whose keys set the defaults of these flags")
    shards: str | None = flag(None, "shard set: folder, manifest.json or http(s) URL", group=DATA)
    val: str | None = flag(None, "validation set", group=DATA)
    img_size: int = flag(32, "input size", check=lambda v: v >= 8, must=">= 8", group=DATA)
    batch_size: int = flag(64, "per rank", check=_positive, must="> 0", group=DATA)
    workers: int = flag(2, "loader workers per rank", check=_not_negative, must=">= 0", group=DATA)
    threads: int = flag(0, "torch threads per rank on CPU (0: the CPUs this process may use, shared by the "
                           "ranks on this node, minus the loader workers; at least 1)", check=_not_negative,
                        must=">= 0", group=DATA)
    orig_prob: float = flag(0.5, "probability of the original instead of a repainted variant (main phase)",
                            check=lambda v: 0 <= v <= 1, must="in [0, 1]", group=DATA)
    max_bad: int = flag(50, "stop after this many bad samples/shards", check=_not_negative, must=">= 0",
                        group=DATA)
    verify: bool = flag(False, "sha256-check every shard before training", group=DATA)
    model: str = flag("resnet18", "model name (random init)", group=MODEL)
    opt: str = flag("sgd", "timm optimizer name", group=MODEL)
    lr: float = flag(0.05, "learning rate of the main phase", check=_positive, must="> 0", group=MODEL)
    finetune_lr: float | None = flag(None, "default: lr / 10", check=_positive, must="> 0", group=MODEL)
    weight_decay: float = flag(5e-4, "weight decay", check=_not_negative, must=">= 0", group=MODEL)
    momentum: float = flag(0.9, "SGD momentum", group=MODEL)
    sched: str = flag("cosine", "timm scheduler name", group=MODEL)
    warmup_epochs: float = flag(0, "LR warm-up epochs", check=_not_negative, must=">= 0", group=MODEL)
    warmup_lr: float = flag(1e-5, "LR at the start of the warm-up", group=MODEL)
    min_lr: float = flag(1e-6, "floor of the LR schedule", group=MODEL)
    epochs: int = flag(2, "epochs on the repainted shards", check=_not_negative, must=">= 0", group=MODEL)
    finetune_epochs: int = flag(1, "epochs on the originals only", check=_not_negative, must=">= 0", group=MODEL)
    model_ema: bool = flag(False, "keep an EMA of the weights (timm ModelEmaV3)", group=MODEL)
    model_ema_decay: float = flag(0.998, "decay of the EMA", group=MODEL)
    out: str = flag("runs/train", "run folder: config, metrics, checkpoints, logs", group=RUN)
    seed: int = flag(0, "seed of every random draw", group=RUN)
    resume: bool = flag(False, "continue from OUT/last.pth", group=RUN)
    checkpoint_every: int = flag(0, "also checkpoint every N steps (0: per epoch)", check=_not_negative,
                                 must=">= 0", group=RUN)
    eval_every: int = flag(1, "validate every N epochs (and at each phase's end)", check=_positive, must=">= 1",
                           group=RUN)
    eval_only: bool = flag(False, "evaluate --checkpoint on --val", group=RUN)
    checkpoint: str | None = flag(None, "checkpoint for --eval-only", group=RUN)
    cpu: bool = flag(False, "stay on CPU even when CUDA is available", group=RUN)
    amp: bool | None = flag(None, "mixed precision (default: on with CUDA)", group=RUN)
    channels_last: bool | None = flag(None, "channels-last memory format (default: on with CUDA)", group=RUN)
    progress: bool = flag(True, "no progress bars", group=RUN)

    def __post_init__(self) -> None:
        problems = self.problems() + invalid_flags(self)
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Checks across flags; one flag's own range is in its field."""
        if self.eval_only:
            return [] if self.checkpoint and self.val else ["--eval-only needs --checkpoint CKPT and --val PATH"]
        return [] if self.shards else ["--shards is required (a shard-set folder, manifest.json or URL)"]


@dataclass
class ClassifyConfig(TrainConfig):
    task: ClassVar[str] = "classification"
    description: ClassVar[str] = (
        "Train a timm classifier on a shard set (repainted variants + online mixing), then fine-tune on the "
        "originals. Launch with torchrun for DDP.")

    val: str | None = flag(None, "validation: a shard set, or an ImageFolder directory", group=DATA)
    model: str = flag("resnet18", "any timm model name (random init)", group=MODEL)
    out: str = flag("runs/classify", "run folder: config, metrics, checkpoints, logs", group=RUN)
    scale: tuple[float, float] = flag((0.35, 1.0), "random-resized-crop scale",
                                      check=lambda v: 0 < v[0] <= v[1] <= 1, must="0 < MIN <= MAX <= 1",
                                      group=DATA)
    color_jitter: float = flag(0.0, "brightness, contrast and saturation jitter of training images (timm's "
                                    "ColorJitter strength; 0: off)", check=_not_negative, must=">= 0",
                               group=DATA)
    hue_jitter: float = flag(0.0, "hue jitter of training images, a fraction of the colour wheel each way "
                                  "(0.25: up to 90 degrees; 0: off)", check=lambda v: 0 <= v <= 0.5,
                             must="in [0, 0.5]", group=DATA)
    grayscale_prob: float = flag(0.0, "probability that a training image is turned to grayscale",
                                 check=lambda v: 0 <= v <= 1, must="in [0, 1]", group=DATA)
    smoothing: float = flag(0.0, "label smoothing", check=lambda v: 0 <= v < 1, must="in [0, 1)", group=MODEL)
    mix: str = flag("sage", "online mixing of the main phase: " + " | ".join(MIX_MODES), choices=MIX_MODES,
                    group=MIX)
    mixup_alpha: float = flag(0.8, "Beta(a, a) of mixup", check=_positive, must="> 0", group=MIX)
    cutmix_alpha: float = flag(1.0, "Beta(a, a) of cutmix", check=_positive, must="> 0", group=MIX)
    sage_alpha: float = flag(1.0, "Beta(a, a) for SAGE's lambda", check=_positive, must="> 0", group=MIX)
    upper_lambda: float = flag(0.7, "SAGE's largest lambda", check=lambda v: 0 < v <= 1, must="in (0, 1]",
                               group=MIX)
    rand_pos: float = flag(0.01, "fraction of shifts SAGE tries", check=lambda v: 0 < v <= 1, must="in (0, 1]",
                           group=MIX)
    sage_loss: str = flag("official", "loss of both SAGE passes: official (BCE on the softmax, as the authors' "
                                      "code) | ce (cross-entropy; soft-target on the mixed batch)",
                          choices=("official", "ce"), group=MIX)
    update_ratio: float = flag(0.5, "weight of the mixed batch's gradient", check=lambda v: 0 <= v <= 1,
                               must="in [0, 1]", group=MIX)
    val_shift: str = flag("", "also evaluate on shifted copies of --val: gray, hue, low_contrast, gaussian_noise, "
                              "gaussian_blur, jpeg, brightness, contrast, pixelate, fog (NAME:SEVERITY, 1-5, "
                              "default 3), or corruptions (all at 3); comma-separated", group=DATA)

    def __post_init__(self) -> None:
        if isinstance(self.scale, list):  # argparse's nargs and YAML both give a list
            self.scale = tuple(self.scale)
        super().__post_init__()

    def problems(self) -> list[str]:
        from .shifts import parse_shifts

        problems = super().problems()
        if self.mix in ("mixup", "cutmix") and self.batch_size % 2:
            problems.append("--mix mixup/cutmix needs an even --batch-size (timm's Mixup)")
        try:
            if parse_shifts(self.val_shift) and not self.val:
                problems.append("--val-shift needs --val (the set it shifts)")
        except ValueError as exc:
            problems.append(str(exc))
        return problems


@dataclass
class DetectConfig(TrainConfig):
    task: ClassVar[str] = "detection"
    description: ClassVar[str] = (
        "Train an EfficientDet (effdet) on a COCO shard set (repainted variants reuse the original's boxes), "
        "then fine-tune on the originals; evaluated with pycocotools. SAGE and other mixing are not applied to "
        "detection: their label mixing is defined for classification. Launch with torchrun for DDP.")

    val: str | None = flag(None, "validation: a COCO shard set (its metadata holds the ground truth)", group=DATA)
    img_size: int = flag(256, "input size (a multiple of 128 for EfficientDet)", check=lambda v: v >= 8,
                         must=">= 8", group=DATA)
    batch_size: int = flag(8, "per rank", check=_positive, must="> 0", group=DATA)
    model: str = flag("tf_efficientdet_d0", "an effdet config name: tf_efficientdet_d0 ... d3, efficientdet_d0 "
                                            "... (random init)", group=MODEL)
    opt: str = flag("adamw", "timm optimizer name", group=MODEL)
    lr: float = flag(1e-3, "learning rate of the main phase", check=_positive, must="> 0", group=MODEL)
    weight_decay: float = flag(1e-4, "weight decay", check=_not_negative, must=">= 0", group=MODEL)
    out: str = flag("runs/detect", "run folder: config, metrics, checkpoints, logs", group=RUN)
    max_boxes: int = flag(100, "boxes per image kept for training", check=_positive, must="> 0", group=DATA)

    def problems(self) -> list[str]:
        multiple = self.img_size % 128 == 0
        return super().problems() + ([] if multiple else
                                     [f"--img-size {self.img_size} must be a multiple of 128 for EfficientDet"])


CONFIGS: dict[str, type[TrainConfig]] = {"classification": ClassifyConfig, "detection": DetectConfig}


def get_args_parser(task: str = "classification") -> argparse.ArgumentParser:
    return build_parser(CONFIGS[task], CONFIGS[task].description)


def parse_args(argv: list[str] | None = None, task: str = "classification") -> TrainConfig:
    """Flags over the `--config` YAML's values over the defaults; any problem exits 2 with its message."""
    parser = get_args_parser(task)
    known, _ = parser.parse_known_args(argv)
    if known.config:
        with open(known.config) as f:
            defaults = yaml.safe_load(f) or {}
        unknown = sorted(set(defaults) - {field.name for field in dataclasses.fields(CONFIGS[task])})
        if unknown:
            parser.error(f"{known.config}: unknown keys {unknown}")
        parser.set_defaults(**defaults)
    try:
        return CONFIGS[task](**vars(parser.parse_args(argv)))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
