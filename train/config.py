"""Command-line flags of the trainers; a YAML file (`--config`) can set their defaults.

The data, optimisation and run flags are shared; classification adds mixing, detection adds
EfficientDet's sizes. Names follow timm's `train.py` where it has one.
"""

from __future__ import annotations

import argparse

import yaml

MIX_MODES = ("none", "mixup", "cutmix", "sage")
DESCRIPTIONS = {
    "classification": "Train a timm classifier on a shard set (repainted variants + online mixing), then "
                      "fine-tune on the originals. Launch with torchrun for DDP.",
    "detection": "Train an EfficientDet (effdet) on a COCO shard set (repainted variants reuse the original's "
                 "boxes), then fine-tune on the originals; evaluated with pycocotools. SAGE and other mixing "
                 "are not applied to detection: their label mixing is defined for classification. "
                 "Launch with torchrun for DDP.",
}
DEFAULTS = {
    "classification": {"model": "resnet18", "img_size": 32, "batch_size": 64, "opt": "sgd", "lr": 0.05,
                       "weight_decay": 5e-4, "out": "runs/classify"},
    "detection": {"model": "tf_efficientdet_d0", "img_size": 256, "batch_size": 8, "opt": "adamw", "lr": 1e-3,
                  "weight_decay": 1e-4, "out": "runs/detect"},
}


def get_args_parser(task: str = "classification") -> argparse.ArgumentParser:
    d = DEFAULTS[task]
    p = argparse.ArgumentParser(description=DESCRIPTIONS[task])
    p.add_argument("--config", default=None, help="YAML file whose keys set the defaults of these flags")
    data = p.add_argument_group("data")
    data.add_argument("--shards", default=None, help="shard set: folder, manifest.json or http(s) URL")
    val_help = ("validation: a shard set, or an ImageFolder directory" if task == "classification"
                else "validation: a COCO shard set (its metadata holds the ground truth)")
    data.add_argument("--val", default=None, help=val_help)
    data.add_argument("--img-size", type=int, default=d["img_size"],
                      help="input size" + (" (a multiple of 128 for EfficientDet)" if task == "detection" else ""))
    data.add_argument("--batch-size", type=int, default=d["batch_size"], help="per rank")
    data.add_argument("--workers", type=int, default=2, help="loader workers per rank")
    data.add_argument("--orig-prob", type=float, default=0.5,
                      help="probability of the original instead of a repainted variant (main phase)")
    if task == "classification":
        data.add_argument("--scale", type=float, nargs=2, default=(0.35, 1.0), help="random-resized-crop scale")
    else:
        data.add_argument("--max-boxes", type=int, default=100, help="boxes per image kept for training")
    data.add_argument("--max-bad", type=int, default=50, help="stop after this many bad samples/shards")
    data.add_argument("--verify", action="store_true", help="sha256-check every shard before training")
    model = p.add_argument_group("model and optimisation")
    model_help = "any timm model name (random init)" if task == "classification" else \
        "an effdet config name: tf_efficientdet_d0 ... d3, efficientdet_d0 ... (random init)"
    model.add_argument("--model", default=d["model"], help=model_help)
    model.add_argument("--opt", default=d["opt"], help="timm optimizer name")
    model.add_argument("--lr", type=float, default=d["lr"])
    model.add_argument("--finetune-lr", type=float, default=None, help="default: lr / 10")
    model.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    model.add_argument("--momentum", type=float, default=0.9)
    model.add_argument("--sched", default="cosine", help="timm scheduler name")
    model.add_argument("--warmup-epochs", type=float, default=0)
    model.add_argument("--warmup-lr", type=float, default=1e-5)
    model.add_argument("--min-lr", type=float, default=1e-6)
    model.add_argument("--epochs", type=int, default=2, help="epochs on the repainted shards")
    model.add_argument("--finetune-epochs", type=int, default=1, help="epochs on the originals only")
    model.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights (timm ModelEmaV3)")
    model.add_argument("--model-ema-decay", type=float, default=0.998)
    if task == "classification":
        model.add_argument("--smoothing", type=float, default=0.0, help="label smoothing")
        mix = p.add_argument_group("mixing")
        mix.add_argument("--mix", choices=MIX_MODES, default="sage")
        mix.add_argument("--mixup-alpha", type=float, default=0.8)
        mix.add_argument("--cutmix-alpha", type=float, default=1.0)
        mix.add_argument("--sage-alpha", type=float, default=1.0, help="Beta(a, a) for SAGE's lambda")
        mix.add_argument("--upper-lambda", type=float, default=0.7)
        mix.add_argument("--rand-pos", type=float, default=0.01, help="fraction of shifts SAGE tries")
        mix.add_argument("--update-ratio", type=float, default=0.5, help="weight of the mixed batch's gradient")
    run = p.add_argument_group("run")
    run.add_argument("--out", default=d["out"], help="run folder: config, metrics, checkpoints, logs")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--resume", action="store_true", help="continue from OUT/last.pth")
    run.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps (0: per epoch)")
    run.add_argument("--eval-every", type=int, default=1, help="validate every N epochs (and at each phase's end)")
    run.add_argument("--eval-only", action="store_true", help="evaluate --checkpoint on --val")
    run.add_argument("--checkpoint", default=None, help="checkpoint for --eval-only")
    run.add_argument("--cpu", action="store_true", help="stay on CPU even when CUDA is available")
    run.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                     help="mixed precision (default: on with CUDA)")
    run.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                     help="channels-last memory format (default: on with CUDA)")
    run.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(task=task)
    return p


def parse_args(argv: list[str] | None = None, task: str = "classification") -> argparse.Namespace:
    parser = get_args_parser(task)
    known, _ = parser.parse_known_args(argv)
    if known.config:
        with open(known.config) as f:
            defaults = yaml.safe_load(f) or {}
        unknown = sorted(set(defaults) - {a.dest for a in parser._actions})
        if unknown:
            parser.error(f"{known.config}: unknown keys {unknown}")
        parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    problems = validate(args)
    if problems:
        parser.error("; ".join(problems))
    return args


def validate(args: argparse.Namespace) -> list[str]:
    problems = []
    if args.eval_only:
        if not args.checkpoint or not args.val:
            problems.append("--eval-only needs --checkpoint CKPT and --val PATH")
    elif not args.shards:
        problems.append("--shards is required (a shard-set folder, manifest.json or URL)")
    checks = {
        "--batch-size": args.batch_size > 0, "--img-size": args.img_size >= 8, "--workers": args.workers >= 0,
        "--epochs": args.epochs >= 0, "--finetune-epochs": args.finetune_epochs >= 0,
        "--orig-prob": 0 <= args.orig_prob <= 1, "--lr": args.lr > 0, "--max-bad": args.max_bad >= 0,
        "--checkpoint-every": args.checkpoint_every >= 0, "--eval-every": args.eval_every >= 1,
    }
    if args.task == "classification":
        checks.update({"--update-ratio": 0 <= args.update_ratio <= 1, "--rand-pos": 0 < args.rand_pos <= 1,
                       "--upper-lambda": 0 < args.upper_lambda <= 1, "--sage-alpha": args.sage_alpha > 0})
        if args.mix in ("mixup", "cutmix") and args.batch_size % 2:
            problems.append("--mix mixup/cutmix needs an even --batch-size (timm's Mixup)")
    else:
        checks["--max-boxes"] = args.max_boxes > 0
        if args.img_size % 128:
            problems.append(f"--img-size {args.img_size} must be a multiple of 128 for EfficientDet")
    problems += [f"invalid value for {flag}" for flag, ok in checks.items() if not ok]
    return problems
