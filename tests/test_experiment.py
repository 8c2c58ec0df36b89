"""The experiment command: config checks, seeded subsets, tables from the CSV, and a real tiny run."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from train.experiment import choose_subset, class_files, load_config, run_experiment
from train.results import markdown, paired_interval, read_rows, write_results

REPO = Path(__file__).resolve().parents[1]


def _folder(root: Path, classes=("a", "b"), per_class=10) -> Path:
    from tests.badinputs import jpeg_bytes

    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / c / f"{i:03d}.jpg").write_bytes(jpeg_bytes())
    return root


def _config(tmp_path, **changes) -> Path:
    settings = {"source": f"imagefolder:{_folder(tmp_path / 'train')}", "val": str(_folder(tmp_path / 'val')),
                "out": str(tmp_path / "exp"), **changes}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"epochz": 3}, "unknown keys \\['epochz'\\]"),
    ({"arms": ["vanilla", "magic"]}, "arms \\['magic'\\]: expected some of vanilla, mixup"),
    ({"fractions": [0.5, 0]}, "fractions \\[0\\]: each must be in \\(0, 1\\]"),
    ({"fractions": [1.5]}, "fractions \\[1.5\\]: each must be in \\(0, 1\\]"),
    ({"val_shift": "sepia"}, "--val-shift 'sepia': unknown shift"),
    ({"subset_seed": "random"}, "subset_seed 'random': expected fixed or per-seed"),
])
def test_bad_configs_are_refused_by_name(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        load_config(_config(tmp_path, **changes))


def test_validation_classes_must_match_before_anything_runs(tmp_path):
    path = _config(tmp_path)
    shutil.rmtree(tmp_path / "val" / "b")
    (tmp_path / "val" / "c").mkdir()
    with pytest.raises(ValueError, match="classes \\['a', 'c'\\] differ from the source's \\['a', 'b'\\]"):
        run_experiment(load_config(path))
    assert not (tmp_path / "exp" / "runs").exists()


def test_subsets_are_seeded_per_class_and_shared_by_arms(tmp_path):
    classes = class_files(_folder(tmp_path / "train", per_class=20))
    first, again = choose_subset(classes, 0.25, seed=0), choose_subset(classes, 0.25, seed=0)
    assert first == again and all(len(files) == 5 for files in first.values())
    assert choose_subset(classes, 0.25, seed=1) != first
    assert all(len(files) == 1 for files in choose_subset(classes, 0.01, seed=0).values())  # at least one


def test_results_md_is_computed_from_the_csv(tmp_path):
    rows = [{"arm": arm, "seed": s, "fraction": 1.0, "eval_set": e, "top1": base + s + (2 if arm == "repaint" else 0)}
            for arm in ("vanilla", "repaint") for s in (0, 1, 2) for e, base in (("clean", 40.0), ("gray", 30.0))]
    write_results(rows, tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert "| repaint | 3 | 43.0 +- 1.0 | +2.0 [+2.0, +2.0] |" in table
    with open(tmp_path / "results.csv") as f:
        edited = list(csv.DictReader(f))
    edited[0]["top1"] = "49.0"  # vanilla, seed 0, clean: 40 -> 49
    with open(tmp_path / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=edited[0].keys())
        writer.writeheader()
        writer.writerows(edited)
    subprocess.run([sys.executable, "-m", "train.results", str(tmp_path)], cwd=REPO, check=True)
    rebuilt = (tmp_path / "results.md").read_text()
    assert rebuilt == markdown(read_rows(tmp_path / "results.csv")) + "\n" and rebuilt != table
    assert "| vanilla | 3 | 44.0 +- 4.4 |" in rebuilt and (tmp_path / "results.png").exists()


def test_paired_interval_uses_students_t():
    mean, half = paired_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / 3 ** 0.5)
    assert paired_interval([1.5]) == (1.5, None)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_tiny_experiment_runs_every_arm_with_equal_steps_and_resumes_without_repeating(cifar_subset, tmp_path):
    val = tmp_path / "val"
    for folder in sorted(cifar_subset.iterdir()):  # a validation folder outside the source, same classes
        (val / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:2]:
            shutil.copy(image, val / folder.name / image.name)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "source": f"imagefolder:{cifar_subset}", "val": str(val), "out": str(tmp_path / "exp"),
        "arms": ["vanilla", "repaint"], "seeds": [0], "fractions": [0.5], "model": "resnet10t", "batch_size": 16,
        "epochs": 1, "finetune_epochs": 1, "val_shift": "gray", "workers": 0,
        "generate": {"variants": 1, "repainter_steps": 2, "repaint_size": 32, "repainter_images": 16,
                     "repainter_batch": 4, "task_model": "resnet10t", "task_warmup": 1, "workers": 1}}))
    command = [sys.executable, "-m", "train.experiment", str(config)]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=550)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = tmp_path / "exp" / "runs" / "fraction-0.5"
    arms = ("vanilla", "repaint")
    summaries = {arm: json.loads((runs / arm / "seed-0" / "summary.json").read_text()) for arm in arms}
    assert summaries["vanilla"]["steps_per_epoch"] == summaries["repaint"]["steps_per_epoch"] == 100 // 16
    assert summaries["vanilla"]["train_samples"] == 100  # 10 of each class's 20
    rows = read_rows(tmp_path / "exp" / "results.csv")
    assert {(r["arm"], r["eval_set"]) for r in rows} == {(a, e) for a in arms for e in ("clean", "gray")}
    logs = {arm: (runs / arm / "seed-0" / "train.log").stat().st_mtime for arm in summaries}
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "[2/2]" in again.stdout
    assert {arm: (runs / arm / "seed-0" / "train.log").stat().st_mtime for arm in summaries} == logs  # not rerun
