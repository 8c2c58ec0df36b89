"""Every GPU path in a few minutes, each against the same run on the CPU; says "no GPU" without one.

    bash bench/gpu_check.sh        (or: python bench/gpu_check.py [--work DIR] [--quick])

1. The job on the demo source with `--gpus 1`: Ray Train fits the repainter on 1 GPU, then the
   painting actors paint on it (`--paint-batch 16`); against `--gpus 0`. Printed: training steps/s and painted images/s.
2. `torchrun train/classify.py` (NCCL, `--amp`, `--channels-last`, SAGE) on those shards vs `--cpu`:
   training images/s from metrics.csv.
3. `torchrun train/detect.py` (EfficientDet-D0, NCCL, AMP) on COCO128 shards vs `--cpu`, when
   ../shared/data/coco128 is present.
Every command's log is kept under WORK; a failing path is reported and the others still run.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COCO = REPO.parent / "shared" / "data" / "coco128"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def timed(cmd: list[str], log: Path) -> tuple[bool, float]:
    start = time.perf_counter()
    with open(log, "w") as f:
        ok = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode == 0
    return ok, time.perf_counter() - start


def images_per_s(run: Path) -> float:
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] == "train"]
    return float(rows[-1]["images_per_s"])


def job(work: Path, gpus: float, steps: int, images: int) -> dict:
    out = work / f"shards-gpu{gpus:g}"
    ok, seconds = timed([sys.executable, "pipeline/generate.py", "--source", f"demo:{images}:96", "--out", str(out),
                         "--gpus", str(gpus), "--repainter-steps", str(steps), "--repaint-size", "64",
                         "--variants", "4", "--paint-batch", "16", "--workers", "1", "--local", "--no-progress"],
                        out.with_suffix(".log"))
    if not ok:
        return {"ok": False, "log": str(out.with_suffix(".log"))}
    json.loads((out / "manifest.json").read_text())  # written last: the job finished
    return {"ok": True, "out": out, "seconds": seconds}


def trainer(work: Path, script: str, shards: Path, device_flags: list[str], name: str, extra: list[str]) -> dict:
    run = work / f"{Path(script).stem}-{name}"
    ok, seconds = timed([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1", script,
                         "--shards", str(shards), "--epochs", "1", "--finetune-epochs", "0", "--out", str(run),
                         "--no-progress", *device_flags, *extra], run.with_suffix(".log"))
    return {"ok": ok, "images_per_s": images_per_s(run) if ok else None, "seconds": seconds,
            "log": str(run.with_suffix(".log"))}


def ratio(gpu: float | None, cpu: float | None) -> str:
    return f"{gpu / cpu:.1f}x" if gpu and cpu else "n/a"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="fewer steps and images (a smoke run)")
    args = p.parse_args()
    if not cuda_available():
        print("no GPU: torch.cuda.is_available() is False here; the GPU paths were not run")
        return 0
    import torch

    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    steps, images = (20, 64) if args.quick else (200, 512)
    failures = 0
    runs = {name: job(work, gpus, steps, images) for name, gpus in (("gpu", 1), ("cpu", 0))}
    for name, r in runs.items():
        if not r["ok"]:
            failures += 1
            print(f"job on {name}: FAILED (see {r['log']})")
    if all(r["ok"] for r in runs.values()):
        g, c = runs["gpu"], runs["cpu"]
        print(f"job (repainter {steps} steps + {images} images x 4 variants): GPU {g['seconds']:.0f} s, "
              f"CPU {c['seconds']:.0f} s ({c['seconds'] / g['seconds']:.1f}x); repainted images/s "
              f"{images / g['seconds']:.1f} vs {images / c['seconds']:.1f} (whole job, training included)")
        common = ["--img-size", "64", "--batch-size", "64", "--mix", "sage"]
        gpu = trainer(work, "train/classify.py", g["out"], ["--amp", "--channels-last"], "gpu", common)
        cpu = trainer(work, "train/classify.py", g["out"], ["--cpu"], "cpu", common)
        failures += (not gpu["ok"]) + (not cpu["ok"])
        print(f"classify.py (resnet18, SAGE, AMP, channels-last): {gpu['images_per_s']} img/s on GPU, "
              f"{cpu['images_per_s']} on CPU: {ratio(gpu['images_per_s'], cpu['images_per_s'])}")
    if COCO.exists():
        shards = work / "coco-shards"
        ok, _ = timed([sys.executable, "pipeline/generate.py", "--source",
                       f"coco:{COCO / 'annotations' / 'instances_train2017.json'}:{COCO / 'images' / 'train2017'}",
                       "--out", str(shards), "--variants", "0", "--max-side", "256", "--local", "--no-progress"],
                      shards.with_suffix(".log"))
        if ok:
            common = ["--img-size", "256", "--batch-size", "8"]
            gpu = trainer(work, "train/detect.py", shards, ["--amp", "--channels-last"], "gpu", common)
            cpu = trainer(work, "train/detect.py", shards, ["--cpu"], "cpu", common)
            failures += (not gpu["ok"]) + (not cpu["ok"])
            print(f"detect.py (EfficientDet-D0, AMP): {gpu['images_per_s']} img/s on GPU, {cpu['images_per_s']} on "
                  f"CPU: {ratio(gpu['images_per_s'], cpu['images_per_s'])}")
        else:
            failures += 1
            print(f"COCO shards: FAILED (see {shards.with_suffix('.log')})")
    print(f"logs: {work}; {failures} path(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
