"""Training images/s: train/classify.py on WebDataset shards vs timm's own train.py on an ImageFolder.

    python bench/bench_trainer.py --timm-train PATH/TO/pytorch-image-models/train.py \\
        [--images 2000] [--epochs 2] [--rounds 3] [--workers 2] [--threads N]

timm's train.py is not part of the timm wheel: clone https://github.com/huggingface/pytorch-image-models
and pass its train.py (or set TIMM_TRAIN). It is run from there, never copied into this repository.
The defaults take about 15 minutes on 2 cores (17 with another job on them; process start-up is
about 20 s of each of the 12 runs); --images, --epochs and --rounds shrink it.

Two comparisons, each a pair of whole training runs on the same CIFAR-10 JPEGs (the shards hold the
folder's own bytes): timm resnet18, batch 64, 32 px, the same epochs, loader workers and torch threads,
no evaluation. (1) No mixing: `classify.py --mix none` vs `train.py`. (2) `classify.py --mix sage`
(SAGE's defaults: a second forward/backward per step) vs `train.py --mixup 0.8`. Both programs run
under `torchrun --standalone --nproc-per-node 1` (one rank, no DDP wrapper on either side). Each round
runs the four programs in turn (A, B, A', B'); medians of the rounds, [min-max] of the per-round ratio.

What is timed: the training epochs, by each program's own clock, summed over the run's epochs:
- classify.py: the `images_per_s` column of its metrics.csv, i.e. per epoch from the start of the
  epoch's DataLoader iteration (its workers start anew every epoch) to the last optimizer step.
- train.py: the average update time that its last log line of each epoch prints (its `update_time_m`,
  reset every epoch), i.e. from the start of `train_one_epoch` (the first batch fetch included; its
  workers start in epoch 0 and persist) to the last update.
Excluded on both sides: process and interpreter start-up, imports, model creation, listing the data,
checkpoint writes between epochs. Neither side evaluates (no `--val`; `--val-split ''`). The whole
process's wall time is printed beside the rate for reference.

Made equal: SGD (timm's, Nesterov) lr 0.05, momentum 0.9, weight decay 5e-4, per-update cosine, no
warm-up; random-resized crop with scale (0.35, 1), ratio (3/4, 4/3), bilinear, horizontal flip 0.5; no
colour jitter, random erasing or auto-augment; label smoothing 0; fp32, contiguous layout. Batches
travel as uint8 and are normalised once per batch on both sides (timm's default "prefetcher" path,
which runs on CPU; classify.py's BatchNormalize). OMP_NUM_THREADS is set for both processes (timm's
train.py has no threads flag: torch takes its intra-op threads from it), and classify.py also gets
`--threads`; DataLoader workers use one thread each on both sides (PyTorch sets that).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
from bench_loader import shard
from bench_shard_job import CIFAR, extract

REPO = Path(__file__).resolve().parents[1]
BATCH, SIZE, MODEL = 64, 32, "resnet18"
# The four runs of a round, in the order they run: (trainer, mixing, row label).
RUNS = (("classify", "none", "classify.py, shards, --mix none"),
        ("timm", "none", "timm train.py, ImageFolder, no mixing"),
        ("classify", "sage", "classify.py, shards, --mix sage"),
        ("timm", "mixup", "timm train.py, ImageFolder, --mixup 0.8"))
# train.py's last log line of an epoch: "Train: E [ N-1/N (100%)] ... Time: v s, r/s  (avg s, R/s) ..."
TIMM_EPOCH_END = re.compile(r"Train: (\d+) \[\s*(\d+)/(\d+) .*?\(\s*[\d.]+s,\s*([\d.]+)/s\)")


def timm_train_path(given: str | None) -> Path:
    """--timm-train, else $TIMM_TRAIN; timm's train.py is not in the pip package, so say where to get it."""
    path = given or os.environ.get("TIMM_TRAIN")
    if not path:
        raise SystemExit("needs timm's train.py, which the timm package does not ship: clone "
                         "https://github.com/huggingface/pytorch-image-models and pass "
                         "--timm-train PATH/pytorch-image-models/train.py (or set TIMM_TRAIN)")
    if not Path(path).is_file():
        raise SystemExit(f"--timm-train {path}: no such file")
    return Path(path).resolve()


def torchrun(script: Path | str, flags: list[str]) -> list[str]:
    # --standalone: a free rendezvous port, so a torchrun of another experiment on 29500 cannot clash.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
            str(script), *flags]


def classify_command(args: argparse.Namespace, shards: Path, out: Path, mix: str) -> list[str]:
    return torchrun(REPO / "train" / "classify.py", [
        "--shards", str(shards), "--out", str(out), "--model", MODEL, "--img-size", str(SIZE),
        "--batch-size", str(BATCH), "--epochs", str(args.epochs), "--finetune-epochs", "0", "--mix", mix,
        "--workers", str(args.workers), "--threads", str(args.threads), "--cpu", "--no-progress",
        "--opt", "sgd", "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "5e-4", "--sched", "cosine",
        "--warmup-epochs", "0", "--min-lr", "1e-6", "--smoothing", "0", "--color-jitter", "0",
        "--scale", "0.35", "1.0"])


def timm_command(args: argparse.Namespace, folder: Path, classes: int, out: Path, mix: str) -> list[str]:
    mixing = ["--mixup", "0.8", "--cutmix", "0", "--mixup-prob", "1.0"] if mix == "mixup" else []
    return torchrun(args.timm_train, [
        "--data-dir", str(folder), "--train-split", "train", "--val-split", "", "--device", "cpu",
        "--model", MODEL, "--num-classes", str(classes), "--input-size", "3", str(SIZE), str(SIZE),
        "-b", str(BATCH), "--epochs", str(args.epochs), "--workers", str(args.workers),
        "--opt", "sgd", "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "5e-4", "--sched", "cosine",
        "--sched-on-updates", "--warmup-epochs", "0", "--min-lr", "1e-6", "--smoothing", "0",
        "--color-jitter", "0", "--scale", "0.35", "1.0", "--ratio", str(3 / 4), str(4 / 3), "--hflip", "0.5",
        "--train-interpolation", "bilinear", "--reprob", "0", *mixing,
        # One log line at each epoch's start and end: the end line carries the epoch's average.
        "--log-interval", "1000000", "--checkpoint-hist", "1", "--output", str(out), "--experiment", "run"])


def run_logged(command: list[str], env: dict[str, str], log: Path) -> float:
    """Runs `command` with its output in `log`; returns the process's wall seconds; stops on failure."""
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(command, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise SystemExit(f"exit code {code}: {' '.join(command)}\n--- last lines ---\n{tail}")
    return time.perf_counter() - start


def classify_rate(out: Path, epochs: int) -> float:
    """Images/s over all epochs from classify.py's metrics.csv (one rank: its images/s is the epoch's)."""
    with open(out / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["phase"] == "train"]
    if len(rows) != epochs:
        raise SystemExit(f"{out / 'metrics.csv'}: {len(rows)} training epochs, expected {epochs}")
    images = [int(row["steps_max"]) * BATCH for row in rows]
    seconds = sum(n / float(row["images_per_s"]) for n, row in zip(images, rows, strict=True))
    return sum(images) / seconds


def timm_rate(log: Path, epochs: int) -> float:
    """Images/s over all epochs from train.py's log: each epoch's last line gives BATCH / mean update time."""
    per_epoch: dict[int, tuple[int, float]] = {}
    for match in TIMM_EPOCH_END.finditer(log.read_text(errors="replace")):
        epoch, index, updates, rate = int(match[1]), int(match[2]), int(match[3]), float(match[4])
        if index + 1 == updates:  # the epoch's last update: the average covers the whole epoch
            per_epoch[epoch] = (updates, rate)
    if len(per_epoch) != epochs:
        raise SystemExit(f"{log}: found the end of {len(per_epoch)} epochs in train.py's log, expected {epochs}")
    seconds = sum(updates * BATCH / rate for updates, rate in per_epoch.values())
    return sum(updates for updates, _ in per_epoch.values()) * BATCH / seconds


def run_once(args: argparse.Namespace, trainer: str, mix: str, data: dict, env: dict[str, str]) -> tuple[float, float]:
    """(training images/s, process wall seconds) of one whole run; its output folder is removed after."""
    out = data["work"] / "runs" / f"{trainer}-{mix}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = out / "output.log"
    if trainer == "classify":
        wall = run_logged(classify_command(args, data["shards"], out, mix), env, log)
        rate = classify_rate(out, args.epochs)
    else:
        wall = run_logged(timm_command(args, data["folder"], data["classes"], out, mix), env, log)
        rate = timm_rate(log, args.epochs)
    shutil.rmtree(out)  # timm's checkpoints are ~45 MB each
    return rate, wall


def prepare(images: int, work: Path) -> dict:
    """The same JPEGs twice: an ImageFolder (FOLDER/train/<class>/) and a shard set of its bytes."""
    if not CIFAR.exists():
        raise SystemExit(f"needs {CIFAR} (the project's shared data)")
    root = extract(images, work / "folder" / "train")
    shards = shard(root, work / "shards", None, per_shard=500)
    classes = sum(1 for p in root.iterdir() if p.is_dir())
    return {"work": work, "folder": root.parent, "shards": shards, "classes": classes,
            "images": sum(1 for _ in root.rglob("*.jpg"))}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def report(args: argparse.Namespace, data: dict, rounds: list[dict]) -> None:
    print(f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}")
    digest = hashlib.sha256(args.timm_train.read_bytes()).hexdigest()[:12]
    print(f"timm train.py: {args.timm_train} (sha256 {digest}...)")
    print(f"{MODEL}, {data['images']} CIFAR-10 images at {SIZE} px, batch {BATCH}, {args.epochs} epoch(s) per run, "
          f"{args.workers} loader workers and {args.threads} torch thread(s) on both sides; "
          f"median of {len(rounds)} interleaved rounds [min-max]")
    print(f"| {'run':42s} | training images/s | process wall s |")
    print(f"| {'-' * 42} | ----------------: | -------------: |")
    for _, _, label in RUNS:
        rate = statistics.median(r[label][0] for r in rounds)
        wall = statistics.median(r[label][1] for r in rounds)
        print(f"| {label:42s} | {rate:17.1f} | {wall:14.1f} |")
    for (a, b), name in zip(((RUNS[0], RUNS[1]), (RUNS[2], RUNS[3])),
                            ("no mixing: classify.py / train.py", "classify.py --mix sage / train.py --mixup 0.8"),
                            strict=True):
        ratios = [r[a[2]][0] / r[b[2]][0] for r in rounds]
        print(f"ratio, {name}: {spread(ratios)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timm-train", default=None,
                        help="timm's train.py from a clone of pytorch-image-models (default: $TIMM_TRAIN)")
    parser.add_argument("--images", type=int, default=2000, help="CIFAR-10 training images (a tenth per class)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="loader workers, both trainers")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads, both trainers (0: classify.py's own pick, CPUs minus workers, >= 1)")
    args = parser.parse_args()
    args.timm_train = timm_train_path(args.timm_train)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    args.threads = args.threads or max(1, cpus - args.workers)
    work = Path(tempfile.mkdtemp(prefix="bench_trainer_"))
    # TMPDIR inside the work folder: torchrun leaves a torchelastic_* log folder per run in the temp dir.
    (work / "tmp").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TMPDIR": str(work / "tmp")}
    try:
        data = prepare(args.images, work)
        rounds = []
        for r in range(args.rounds):
            # One round runs every program once, so a slow spell of the machine hits all of them alike.
            results = {}
            for trainer, mix, label in RUNS:
                results[label] = run_once(args, trainer, mix, data, env)
                print(f"round {r + 1}/{args.rounds}: {label:42s} {results[label][0]:7.1f} img/s "
                      f"(process {results[label][1]:.0f} s)", flush=True)
            rounds.append(results)
        report(args, data, rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
