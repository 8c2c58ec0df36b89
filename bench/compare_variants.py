"""Do the repainted variants help a classifier? Originals only vs originals + variants, on CIFAR-10.

    python bench/compare_variants.py [--work DIR] [--per-class 200] [--seeds 0 1 2] [--epochs 15]
        [--finetune-epochs 5] [--shards DIR] [--train-flags="..." --tag T] [-- extra generate.py flags]

1. From `../shared/data/cifar10/train.tar`: a training folder of the first `--per-class` images of
   each class, and a validation slice of the last 100 images of each class (1,000 images never
   trained on), plus two colour-shifted copies of the slice: grayscale, and hue rotated by 90 degrees.
2. `pipeline/generate.py --source imagefolder:TRAIN --repaint-size 32` (the job's defaults
   otherwise; extra flags after `--`), unless `--shards` names a set made before.
3. Per seed, `torchrun train/classify.py` twice on that shard set, same model, epochs and steps:
   `originals` (`--orig-prob 1`: never a variant) and `variants` (`--orig-prob 0.5`), both followed
   by `--finetune-epochs` on the originals; no mixing (`--mix none`), so only the variants differ.
4. Each final checkpoint is evaluated on the three slices (`--eval-only`); a table of top-1 per arm
   (mean and spread over seeds) and the per-seed difference is printed and saved as `results.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "data" / "cifar10" / "train.tar"
SHIFTS = ("plain", "gray", "hue90")
ARMS = ("originals", "variants")


def shifted(image: Image.Image, shift: str) -> Image.Image:
    if shift == "gray":
        return image.convert("L").convert("RGB")
    if shift == "hue90":  # PIL's HSV hue runs 0-255 for 0-360 degrees
        h, s, v = (np.asarray(c, np.int32) for c in image.convert("HSV").split())
        h = ((h + 64) % 256).astype(np.uint8)
        return Image.merge("HSV", [Image.fromarray(h), *(Image.fromarray(c.astype(np.uint8)) for c in (s, v))]
                           ).convert("RGB")
    return image


def prepare_folders(work: Path, per_class: int, val_per_class: int = 100) -> None:
    """train/<class>/ (first images) and val-<shift>/<class>/ (last images) from the CIFAR tar."""
    if (work / "val-hue90").exists():
        return
    if not CIFAR.is_file():
        raise SystemExit(f"{CIFAR} not found: this benchmark needs the project's shared CIFAR-10 copy")
    with tarfile.open(CIFAR) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")),
                         key=lambda m: m.name)
        by_class: dict[str, list[tarfile.TarInfo]] = {}
        for m in members:
            by_class.setdefault(Path(m.name).parent.name, []).append(m)
        for cls, files in sorted(by_class.items()):
            for m in files[:per_class]:
                dest = work / "train" / cls / Path(m.name).name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(m).read())
            for m in files[-val_per_class:]:
                image = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                for shift in SHIFTS:
                    dest = work / f"val-{shift}" / cls / (Path(m.name).stem + ".png")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shifted(image, shift).save(dest)


def run(cmd: list[str], log: Path) -> str:
    print("+", " ".join(cmd), flush=True)
    with open(log, "w") as f:
        done = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=f, text=True)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}); see {log}")
    return done.stdout


def train_arm(work: Path, shards: Path, arm: str, seed: int, args) -> dict[str, float]:
    out = work / "runs" / f"{arm}{args.tag}-{seed}"
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "last.pth"
    if not (out / "summary.json").exists():
        run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", "train/classify.py",
             "--shards", str(shards), "--val", str(work / "val-plain"), "--model", args.model, "--img-size", "32",
             "--batch-size", "64", "--workers", "1", "--mix", "none", "--epochs", str(args.epochs),
             "--finetune-epochs", str(args.finetune_epochs), "--lr", str(args.lr), "--seed", str(seed),
             "--orig-prob", "1.0" if arm == "originals" else "0.5", "--eval-every", "100",
             "--out", str(out), "--no-progress", *args.train_flags.split()], out.with_suffix(".log"))
    top1 = {}
    for shift in SHIFTS:
        printed = run([sys.executable, "train/classify.py", "--eval-only", "--checkpoint", str(checkpoint),
                       "--val", str(work / f"val-{shift}"), "--workers", "1", "--no-progress"],
                      out.parent / f"{out.name}-{shift}.log")
        top1[shift] = json.loads(printed.strip().splitlines()[-1])["top1"]
    print(f"{arm}{args.tag} seed {seed}: " + ", ".join(f"{k} {v:.1f}" for k, v in top1.items()), flush=True)
    return top1


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=None, help="folder for data, shards and runs (kept; reruns resume)")
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--shards", type=Path, default=None, help="an existing shard set of the training folder")
    p.add_argument("--prepare-only", action="store_true",
                   help="only write WORK/train and the WORK/val-* slices (e.g. for bench/experiment.yaml)")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                   help="train only these arms (the table needs both; runs already in WORK/runs are reused)")
    p.add_argument("--train-flags", default="",
                   help='extra classify.py flags for every arm, given with "=": --train-flags="--hue-jitter 0.5"')
    p.add_argument("--tag", default="", help="suffix of the run folders (WORK/runs/ARMTAG-SEED) and results file")
    args = p.parse_args(argv)
    work = (args.work or Path(tempfile.mkdtemp(prefix="compare_variants_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    prepare_folders(work, args.per_class)
    if args.prepare_only:
        print(f"prepared {work / 'train'} and {work / 'val-plain'}")
        return
    shards = args.shards or work / "shards"
    if args.shards is None and not (shards / "manifest.json").exists():
        run([sys.executable, "pipeline/generate.py", "--source", f"imagefolder:{work / 'train'}", "--out", str(shards),
             "--repaint-size", "32", "--local", "--no-progress", *extra], work / "generate.log")
    results = {arm: [train_arm(work, shards, arm, s, args) for s in args.seeds] for arm in args.arms}
    if len(results) < len(ARMS):
        return
    table = {}
    for shift in SHIFTS:
        row = {arm: [r[shift] for r in runs] for arm, runs in results.items()}
        diff = [v - o for v, o in zip(row["variants"], row["originals"], strict=True)]
        table[shift] = {**row, "difference": diff}
        spread = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
        print(f"{shift:6s} originals {statistics.mean(row['originals']):5.1f} +- {spread(row['originals']):.1f}   "
              f"variants {statistics.mean(row['variants']):5.1f} +- {spread(row['variants']):.1f}   "
              f"difference {statistics.mean(diff):+5.1f} [{min(diff):+.1f} .. {max(diff):+.1f}]")
    manifest = json.loads((shards / "manifest.json").read_text())
    summary = {"seeds": args.seeds, "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
               "model": args.model, "per_class": args.per_class, "top1": table,
               "repainter_quality": (manifest.get("repainter") or {}).get("quality")}
    summary.update(shards=str(shards), train_flags=args.train_flags)
    results_file = work / f"results{args.tag}.json"
    results_file.write_text(json.dumps(summary, indent=1))
    print(f"results: {results_file}")


if __name__ == "__main__":
    main()
