"""The papers' comparisons on your own data: `python -m train.experiment CONFIG.yaml`.

One YAML names a source folder, a validation set, the arms, the seeds, the data fractions, the
model and the budget. For each fraction the source is cut into per-class subsets (drawn with a
seed: the same images for every arm), each subset is sharded once per repainter setting with
`pipeline/generate.py`, and every (arm, seed, fraction) is trained with `torchrun train/classify.py`,
so what is measured is what users run. Every arm gets the same optimizer steps (the same shard
samples per epoch and the same epochs). Finished runs are not repeated; a killed one resumes.
Outputs in `out`: `results.csv` (one row per arm x seed x fraction x evaluation set), `results.md`
and `results.png` (train/results.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from manifests.contract import derive_seed

from .results import write_results
from .shifts import parse_shifts, shift_label

REPO = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# arm -> (shard set kind, classify.py flags). "plain": --variants 0; "repaint": variants, task loss on;
# "no-task-loss": the paper's ablation. Baselines read originals only (--orig-prob 1).
ARMS: dict[str, tuple[str, list[str]]] = {
    "vanilla": ("plain", ["--orig-prob", "1", "--mix", "none"]),
    "mixup": ("plain", ["--orig-prob", "1", "--mix", "mixup"]),
    "cutmix": ("plain", ["--orig-prob", "1", "--mix", "cutmix"]),
    "sage": ("plain", ["--orig-prob", "1", "--mix", "sage"]),
    "repaint": ("repaint", ["--orig-prob", "0.5", "--mix", "none"]),
    "repaint+sage": ("repaint", ["--orig-prob", "0.5", "--mix", "sage"]),
    "repaint+cutmix": ("repaint", ["--orig-prob", "0.5", "--mix", "cutmix"]),
    "repaint-no-task-loss": ("no-task-loss", ["--orig-prob", "0.5", "--mix", "none"]),
}


@dataclass
class ExperimentConfig:
    source: str  # imagefolder:DIR
    val: str  # an ImageFolder directory or a shard set, outside the source folder
    out: str
    arms: list[str] = field(default_factory=lambda: ["vanilla", "repaint"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    fractions: list[float] = field(default_factory=lambda: [1.0])
    subset_seed: str = "fixed"  # fixed: one subset per fraction; per-seed: each seed draws its own
    model: str = "resnet18"
    img_size: int = 32
    batch_size: int = 64
    epochs: int = 10
    finetune_epochs: int = 2
    lr: float = 0.05
    nproc_per_node: int = 1
    workers: int = 1
    val_shift: str = "gray,hue"
    generate: dict = field(default_factory=dict)  # extra pipeline/generate.py flags (key: value)
    classify: dict = field(default_factory=dict)  # extra train/classify.py flags for every arm

    def __post_init__(self) -> None:
        problems = []
        if not self.source.startswith("imagefolder:") or not Path(self.source[12:]).is_dir():
            problems.append(f"source {self.source!r}: expected imagefolder:DIR of an existing folder")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            problems.append(f"arms {unknown or self.arms}: expected some of {', '.join(ARMS)}")
        bad = [f for f in self.fractions if not isinstance(f, (int, float)) or not 0 < f <= 1]
        if bad or not self.fractions:
            problems.append(f"fractions {bad or self.fractions}: each must be in (0, 1]")
        if self.subset_seed not in ("fixed", "per-seed"):
            problems.append(f"subset_seed {self.subset_seed!r}: expected fixed or per-seed")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds {self.seeds}: expected distinct integers")
        try:
            parse_shifts(self.val_shift)
        except ValueError as exc:
            problems.append(str(exc))
        if not Path(self.val).exists():
            problems.append(f"val {self.val}: not found")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def source_dir(self) -> Path:
        return Path(self.source[12:])


def load_config(path: str | Path) -> ExperimentConfig:
    """The YAML as an ExperimentConfig; unknown keys, unknown arms and bad values are refused by name."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    known = {f.name for f in dataclasses.fields(ExperimentConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown} (known: {', '.join(sorted(known))})")
    missing = sorted({"source", "val", "out"} - set(data))
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    try:
        return ExperimentConfig(**data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def class_files(root: Path) -> dict[str, list[Path]]:
    """{class: sorted image files} of an ImageFolder (regular files only, no links followed)."""
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        classes[folder.name] = sorted(p for p in folder.iterdir()
                                      if p.is_file() and not p.is_symlink() and p.suffix.lower() in IMAGE_SUFFIXES)
    return classes


def choose_subset(classes: dict[str, list[Path]], fraction: float, seed: int) -> dict[str, list[Path]]:
    """A seeded per-class subset: round(fraction x n) images (at least 1) of each class."""
    chosen = {}
    for name, files in classes.items():
        count = max(1, round(fraction * len(files)))
        rng = random.Random(derive_seed(seed, "subset", name, fraction))
        chosen[name] = sorted(rng.sample(files, count))
    return chosen


def materialise(subset: dict[str, list[Path]], folder: Path) -> Path:
    """The subset as an ImageFolder of hard links (copies across filesystems); written once."""
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for name, files in subset.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for file in files:
            try:
                os.link(file, folder / name / file.name)
            except OSError:
                shutil.copy2(file, folder / name / file.name)
    done.write_text(json.dumps({name: [f.name for f in files] for name, files in subset.items()}))
    return folder


def _run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({done.returncode}); see {log}")


def shard_set(cfg: ExperimentConfig, images: Path, kind: str, out: Path) -> Path:
    """`pipeline/generate.py` on one subset, once per kind (the job itself resumes a partial one)."""
    if (out / "manifest.json").exists():
        return out
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in sorted(cfg.generate.items()) if k != "variants"]
    variants = ["--variants", "0"] if kind == "plain" else ["--variants", str(cfg.generate.get("variants", 4))]
    extra = ["--no-task-loss"] if kind == "no-task-loss" else []
    _run([sys.executable, "pipeline/generate.py", "--source", f"imagefolder:{images}", "--out", str(out),
          "--no-progress", *variants, *extra, *flags], out.with_suffix(".log"))
    return out


def train_run(cfg: ExperimentConfig, arm: str, seed: int, shards: Path, run_dir: Path) -> dict:
    """One `torchrun train/classify.py`; a finished run (summary.json with the same settings) is reused."""
    summary_path = run_dir / "summary.json"
    flags = ["--shards", str(shards), "--val", cfg.val, "--val-shift", cfg.val_shift, "--model", cfg.model,
             "--img-size", str(cfg.img_size), "--batch-size", str(cfg.batch_size), "--epochs", str(cfg.epochs),
             "--finetune-epochs", str(cfg.finetune_epochs), "--lr", str(cfg.lr), "--seed", str(seed),
             "--workers", str(cfg.workers), "--out", str(run_dir), "--no-progress", *ARMS[arm][1],
             *[f"--{k.replace('_', '-')}={v}" for k, v in sorted(cfg.classify.items())]]
    identity = json.dumps(flags)
    if summary_path.exists() and (run_dir / "experiment-run.json").exists() \
            and (run_dir / "experiment-run.json").read_text() == identity:
        return json.loads(summary_path.read_text())
    if run_dir.exists() and (run_dir / "experiment-run.json").exists() \
            and (run_dir / "experiment-run.json").read_text() != identity:
        shutil.rmtree(run_dir)  # made with other settings: start again
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "experiment-run.json").write_text(identity)
    resume = ["--resume"] if (run_dir / "last.pth").exists() else []
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(cfg.nproc_per_node),
          "train/classify.py", *flags, *resume], run_dir / "train.log")
    return json.loads(summary_path.read_text())


def run_experiment(cfg: ExperimentConfig) -> list[dict]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    classes = class_files(cfg.source_dir)
    _check_val_classes(cfg, sorted(classes))
    shifts = [shift_label(*s) for s in parse_shifts(cfg.val_shift)]
    plan = [(f, s, a) for f in cfg.fractions for s in cfg.seeds for a in cfg.arms]
    rows, started, trained = [], time.monotonic(), 0
    for done_count, (fraction, seed, arm) in enumerate(plan):
        subset_seed = seed if cfg.subset_seed == "per-seed" else 0
        where = out / f"fraction-{fraction:g}" / f"subset-{subset_seed}"
        images = materialise(choose_subset(classes, fraction, subset_seed), where / "images")
        shards = shard_set(cfg, images, ARMS[arm][0], where / f"shards-{ARMS[arm][0]}")
        run_dir = out / "runs" / f"fraction-{fraction:g}" / arm / f"seed-{seed}"
        trained += not (run_dir / "summary.json").exists()  # the ETA counts runs trained now, not reused
        summary = train_run(cfg, arm, seed, shards, run_dir)
        rows += [{"arm": arm, "seed": seed, "fraction": fraction, "eval_set": name,
                  "top1": summary["top1" if name == "clean" else f"top1_{name}"]} for name in ["clean", *shifts]]
        elapsed = time.monotonic() - started
        eta = elapsed / max(1, trained) * (len(plan) - done_count - 1)
        print(f"[{done_count + 1}/{len(plan)}] fraction {fraction:g} seed {seed} {arm}: top1 {summary['top1']:.1f}"
              f" ({cfg.epochs}+{cfg.finetune_epochs} epochs)  elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min",
              flush=True)
    write_results(rows, out)
    return rows


def _check_val_classes(cfg: ExperimentConfig, source_classes: list[str]) -> None:
    val = Path(cfg.val)
    if (val / "manifest.json").exists():
        val_classes = json.loads((val / "manifest.json").read_text()).get("classes") or []
    else:
        val_classes = sorted(p.name for p in val.iterdir() if p.is_dir())
    if val_classes != source_classes:
        raise ValueError(f"val {cfg.val}: classes {val_classes} differ from the source's {source_classes}")
    if val.resolve().is_relative_to(cfg.source_dir.resolve()):
        raise ValueError(f"val {cfg.val} is inside the source folder: keep the validation set apart")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.experiment", description=__doc__.splitlines()[0])
    p.add_argument("config", help="the experiment's YAML (see bench/experiment.yaml)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        run_experiment(cfg)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"results: {Path(cfg.out) / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
