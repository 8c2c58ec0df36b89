"""The classification task: its sample decoder, a timm model, class targets, online mixing, top-1/top-5."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch.utils.data import DataLoader, Dataset, Subset

from manifests import decode_image

from .distributed import DistInfo, all_reduce_sum
from .fastdecode import BatchNormalize, CropFirstDecode
from .shifts import Shifted, parse_shifts, shift_label
from .stream import EvalStream, ShardSet, open_shard_set, read_image, seed_augmentation


class ClassificationDecoder:
    """sample -> (image tensor, class index); the classification trainer's sample decoder.

    With `crop_first` (training), the transform's random-resized crop is drawn before the decode and
    a large JPEG is decoded only as large as that crop needs (train/fastdecode.py)."""

    def __init__(self, transform: Callable, num_classes: int | None = None, crop_first: bool = False):
        self.transform, self.num_classes = transform, num_classes
        self.crop_first = CropFirstDecode(transform) if crop_first else None

    def __call__(self, sample: dict, image_field: str, aug_seed: int | None) -> tuple:
        if "cls" not in sample:
            raise ValueError("no 'cls' field: this shard set has no class labels (a detection set?)")
        raw = sample["cls"]
        try:
            label = int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"cls {raw!r} is not a class index") from None
        if label < 0:
            raise ValueError(f"cls {label} is negative")
        if self.num_classes is not None and label >= self.num_classes:
            raise ValueError(f"cls {label} is outside the set's {self.num_classes} classes")
        if aug_seed is not None:  # before the decode: the crop-first path draws its crop there
            seed_augmentation(aug_seed)
        if self.crop_first is not None:
            return self.crop_first(functools.partial(read_image, sample, image_field)), label
        return self.transform(read_image(sample, image_field)), label


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


def is_shard_set(path: str) -> bool:
    remote = path.startswith(("http://", "https://", "s3://"))
    return remote or path.endswith(".json") or (Path(path) / "manifest.json").exists()


class ClassificationTask:
    name = "classification"
    metric_names = ("val_loss", "top1", "top5")
    summary_metrics = ("top1", "top5", "val_samples")

    def labels(self, shard_set: ShardSet) -> list[str]:
        return shard_set.classes

    def build_model(self, args, num_classes: int) -> torch.nn.Module:
        return timm.create_model(args.model, pretrained=False, num_classes=num_classes)

    def train_decoder(self, args, labels: list[str] | None = None) -> ClassificationDecoder:
        """timm's training transform, crop first and ending in uint8 (`phase_parts`' `prepare`
        normalises the batch); colour jitter applies to originals and variants alike."""
        jitter = (args.color_jitter,) * 3 + (args.hue_jitter,)
        transform = create_transform(args.img_size, is_training=True, scale=tuple(args.scale), color_jitter=jitter,
                                     grayscale_prob=args.grayscale_prob, use_prefetcher=True)
        return ClassificationDecoder(transform, len(labels) if labels else None, crop_first=True)

    def phase_parts(self, args, num_classes: int) -> dict:
        """Mixer and loss of one phase; a fresh mixer per phase keeps its generator's draws per phase."""
        mixer, criterion = None, None
        if args.mix == "sage":
            from .sage import SageMix, softmax_bce

            mixer = SageMix(num_classes=num_classes, alpha=args.sage_alpha, upper_lambda=args.upper_lambda,
                            rand_pos=args.rand_pos, label_smoothing=args.smoothing, generator=torch.Generator())
            criterion = softmax_bce if args.sage_loss == "official" else None
        elif args.mix in ("mixup", "cutmix"):
            mixup, cutmix = (args.mixup_alpha, 0.0) if args.mix == "mixup" else (0.0, args.cutmix_alpha)
            mixer = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=args.smoothing,
                          num_classes=num_classes)
        if criterion is None:
            criterion = SoftTargetCrossEntropy() if mixer is not None else LabelSmoothingCrossEntropy(args.smoothing)
        return {"mix": args.mix, "mixer": mixer, "criterion": criterion, "update_ratio": args.update_ratio,
                "sage_loss": args.sage_loss, "prepare": BatchNormalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)}

    def val_loader(self, args, dist: DistInfo, labels: list[str], shift: tuple[str, int] | None = None
                   ) -> DataLoader | None:
        """--val as a loader; with `shift` (name, severity), its shifted copy (train/shifts.py)."""
        if not args.val:
            return None
        transform = create_transform(args.img_size, is_training=False, crop_pct=1.0)
        if shift is not None:
            transform = Shifted(*shift, then=transform)
        if is_shard_set(args.val):
            val_set = open_shard_set(args.val)
            if labels and val_set.classes != labels:
                raise ValueError(f"{args.val}: classes {val_set.classes} differ from the model's {labels}")
            dataset = EvalStream(val_set, ClassificationDecoder(transform, len(labels) or None), dist.rank,
                                 dist.world, args.max_bad)
        else:
            folder = _SafeImageFolder(args.val, transform, labels)
            dataset = Subset(folder, range(dist.rank, len(folder), dist.world))  # each image exactly once
        return DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)

    def shifted_val_loaders(self, args, dist: DistInfo, labels: list[str]) -> dict[str, DataLoader]:
        """{metric suffix: loader} for every --val-shift."""
        shifts = parse_shifts(args.val_shift)
        return {shift_label(*shift): self.val_loader(args, dist, labels, shift) for shift in shifts}

    def evaluate(self, model: torch.nn.Module, loader, dist: DistInfo, labels: list[str]) -> dict:
        return evaluate_top_k(model, loader, dist.device, len(labels))


@torch.no_grad()
def evaluate_top_k(model: torch.nn.Module, loader, device: torch.device, num_classes: int) -> dict[str, float]:
    """Top-1/top-5 and loss over every sample of `loader` on every rank (summed across ranks)."""
    model.eval()
    loss_sum, top1, top5, count, bad = 0.0, 0.0, 0.0, 0.0, 0.0
    k = min(5, num_classes)
    for x, y, skipped in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        ranked = logits.topk(k, dim=1).indices
        top1 += float((ranked[:, 0] == y).sum())
        top5 += float((ranked == y[:, None]).any(dim=1).sum())
        count += y.numel()
        bad += float(skipped.sum())
    loss_sum, top1, top5, count, bad = all_reduce_sum([loss_sum, top1, top5, count, bad], device)
    if count == 0:
        raise RuntimeError("the validation set yielded no samples")
    return {"val_loss": loss_sum / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count,
            "val_samples": int(count), "val_bad": int(bad)}
