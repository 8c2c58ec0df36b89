"""The repainter inside the Ray job: training on Ray Train, variants in the shards, resume, determinism."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from manifests import decode_image, read_manifest, verify_shard_set
from manifests.__main__ import main as manifests_cli
from manifests.imageio import decode_label_map
from pipeline.job import run_job
from pipeline.job_config import GenerateConfig
from pipeline.repaint.paint import is_repainted, load_repainter

REPO = Path(__file__).resolve().parents[1]
TINY = {"repaint_size": 32, "repainter_batch": 2, "task_model": "resnet10t", "progress": False}


def _samples(out: Path) -> list[dict]:
    return list(wds.WebDataset(sorted(str(p) for p in out.glob("shard-*.tar")), shardshuffle=False))


def _shard_hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*.tar"))}


@pytest.fixture(scope="module")
def trained(ray_address, tmp_path_factory) -> Path:
    """A job that trains a tiny repainter with 2 Ray Train workers (DDP on gloo) and writes 2 variants."""
    out = tmp_path_factory.mktemp("repainted")
    run_job(GenerateConfig(source="demo:24:48", out=str(out), samples_per_shard=8, variants=2, repainter_steps=3,
                           train_workers=2, **TINY))
    return out


def test_job_trains_on_ray_train_and_writes_variants_at_the_stored_size(trained):
    manifest = read_manifest(trained)
    checkpoint = trained / "repainter" / "repainter.pt"
    assert manifest["repainter"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert manifest["repainter"]["step"] == 3 and manifest["repainter"]["trained_by_this_job"]
    assert manifest["segmenter"] == {"name": "demo", "params": {"dataset_seed": 0}}  # the demo's default
    training = manifest["repainter"]["training"]
    assert training["metrics"]["step"] == 3 and 0 <= training["metrics"]["proxy_acc_painted"] <= 1
    # what else decides the weights bit for bit: this CPU's kernel ISA
    assert training["metrics"]["trained_on"] == f"cpu {torch.backends.cpu.get_cpu_capability()}"
    # the styles E gave the regions of its training images, kept for --variant-latent bank
    assert manifest["repainter"]["style_bank"] > 0
    quality = manifest["repainter"]["quality"]  # measured on the written shards
    assert quality["images"] > 0 and set(quality["boundary_f"]) == {"variant", "original", "unrelated_original"}
    assert quality["colour_distance"]["variant_vs_variant"] > 0 and "proxy_acc_real" in quality
    # the proxy T (kept beside the repainter) on the measured samples the shards hold, per variant
    assert (trained / "repainter" / "task.pt").is_file()
    proxy = quality["proxy_top1"]
    assert 0 <= proxy["originals"] <= 1 and len(proxy["variants"]) == 2
    assert proxy["may_include_training_images"]  # 24 images, all in the training set
    assert verify_shard_set(trained) == []
    samples = _samples(trained)
    assert len(samples) == 24
    for s in samples:
        original = decode_image(s["png"] if "png" in s else s["jpg"], "o").image
        meta = json.loads(s["json"])
        original_field = "png" if "png" in s else "jpg"
        assert meta["fields"] == sorted(["cls", "json", "seg.png", "rp0.jpg", "rp1.jpg", original_field])
        for v in ("rp0.jpg", "rp1.jpg"):
            assert decode_image(s[v], v).image.size == original.size  # boxes stay valid
        assert decode_label_map(s["seg.png"], "seg").shape == (original.height, original.width)
        assert s["rp0.jpg"] != s["rp1.jpg"]  # two latent draws, two paintings
    rows = (trained / "repainter" / "logs" / "losses.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3]
    assert any((trained / "repainter" / "logs" / "tb").iterdir())


def test_preview_grid_is_written_and_shown(trained, capsys):
    preview = trained / read_manifest(trained)["preview"]
    grid = Image.open(preview)
    assert grid.width == 2 + 4 * (96 + 2) and grid.height == 2 + 6 * (96 + 2)  # 6 rows of orig, map, 2 variants
    assert manifests_cli(["show", str(trained)]) == 0
    shown = capsys.readouterr().out
    assert f"preview     {preview}" in shown and "repainter   sha256" in shown and "segmenter   demo" in shown
    assert "trained on  cpu " in shown and "G sees: segments" in shown
    assert "variants    boundary F" in shown and "between two variants" in shown
    assert "proxy task  in training, top-1" in shown and "proxy task  top-1 on the measured originals" in shown
    # the job's defaults: the proxy was measured on the training's mix, the shards paint every region new
    assert "as in training, region keep-prob 0.5, new codes prior; the shards' variants: 0.0, bank" in shown


def test_rerun_reuses_the_training_and_rewrites_nothing(trained):
    before = _shard_hashes(trained)
    mtimes = {p: p.stat().st_mtime_ns for p in trained.glob("shard-*.tar")}
    run_job(GenerateConfig(source="demo:24:48", out=str(trained), samples_per_shard=8, variants=2,
                           repainter_steps=3, train_workers=2, **TINY))
    assert _shard_hashes(trained) == before
    assert {p: p.stat().st_mtime_ns for p in trained.glob("shard-*.tar")} == mtimes


def test_same_checkpoint_gives_identical_shards_with_1_or_2_writers(trained, tmp_path):
    checkpoint = str(trained / "repainter" / "repainter.pt")
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        run_job(GenerateConfig(source="demo:24:48", out=str(out), samples_per_shard=8, variants=2, workers=workers,
                               repainter=checkpoint, repainter_steps=0, repaint_fraction=0.5, **TINY))
        outs.append(out)
    assert _shard_hashes(outs[0]) == _shard_hashes(outs[1])
    manifest = read_manifest(outs[0])
    assert manifest["repainter"]["sha256"] == load_repainter(checkpoint)[3]["sha256"]
    assert not manifest["repainter"]["trained_by_this_job"]
    painted = {s["__key__"] for s in _samples(outs[0]) if "rp0.jpg" in s}
    expected = {f"demo-{i:08d}" for i in range(24) if is_repainted(0, f"demo-{i:08d}", 0.5)}
    assert painted == expected and 0 < len(painted) < 24


def test_bank_latent_is_the_default_and_prior_paints_other_codes(trained, tmp_path):
    checkpoint = str(trained / "repainter" / "repainter.pt")
    assert read_manifest(trained)["repainter"]["variant_latent"] == "bank"  # the default
    out = tmp_path / "prior"
    run_job(GenerateConfig(source="demo:24:48", out=str(out), samples_per_shard=8, variants=2, repainter=checkpoint,
                           repainter_steps=0, variant_latent="prior", **TINY))
    assert read_manifest(out)["repainter"]["variant_latent"] == "prior" and len(_samples(out)) == 24
    prior, banked = _samples(out), _samples(trained)
    for p, b in zip(prior, banked, strict=True):  # same checkpoint and seeds: only the codes' source differs
        assert b["rp0.jpg"] != p["rp0.jpg"] and b["rp0.jpg"] != b["rp1.jpg"]


def test_a_corrupt_repainter_checkpoint_is_named(tmp_path, capsys):
    bad = tmp_path / "r.pt"
    bad.write_bytes(b"not a checkpoint")
    from pipeline.generate import main

    code = main(["--out", str(tmp_path / "o"), "--repainter", str(bad), "--repainter-steps", "0", "--local"])
    assert code == 1 and f"{bad}: not a loadable repainter checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(ray_address, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, str(REPO / "pipeline" / "generate.py"), "--source", "demo:16:32", "--out", str(out),
            "--variants", "1", "--repainter-steps", "20", "--repainter-checkpoint-every", "2", "--repaint-size", "32",
            "--repainter-batch", "2", "--task-model", "resnet10t", "--no-progress"]
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    driver = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    losses = out / "repainter" / "logs" / "losses.csv"
    deadline = time.monotonic() + 240
    # Step 6 logged: the checkpoint of step 4 has been reported and registered by Ray Train.
    while time.monotonic() < deadline and (not losses.exists() or len(losses.read_text().splitlines()) < 7):
        assert driver.poll() is None, "the job ended before it could be killed"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    assert not (out / "manifest.json").exists()
    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = [line for line in (rerun.stdout + rerun.stderr).splitlines() if "resuming from the checkpoint" in line]
    assert resumed and 4 <= int(resumed[0].split()[-1]) < 20
    rows = losses.read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, 21))  # each step once, none lost
    assert read_manifest(out)["repainter"]["step"] == 20


def test_label_maps_survive_the_shard_round_trip(trained):
    s = _samples(trained)[0]
    labels = decode_label_map(s["seg.png"], "seg")
    assert labels.dtype == np.uint16 and labels.max() >= 1  # the demo shapes make several segments


def test_a_record_that_kills_its_repaint_actor_fails_the_job_after_bounded_retries(trained, tmp_path):
    from pipeline.job import JobError, _write_shards
    from pipeline.records import RecordSettings
    from pipeline.repaint.job import RepaintPlan, start_painters
    from pipeline.shards import plan_shards
    from pipeline.sources import Record, open_source

    class PoisonRecord(Record):  # defined here so Ray ships it by value to the actor
        def read(self):
            os._exit(1)  # a crash no try/except can catch: segfault, OOM kill

    cfg = GenerateConfig(source="demo", out=str(tmp_path), max_retries=1, workers=1, variants=1, **TINY)
    settings = RecordSettings(key_prefix="demo", class_names=("a",))
    painters = start_painters(RepaintPlan.from_config(cfg, open_source(cfg.source)),
                              trained / "repainter" / "repainter.pt")
    with pytest.raises(JobError, match=r"shard shard-000000.tar \(records 0..0\) failed after 1 retries"):
        _write_shards(cfg, plan_shards(1, 1), [PoisonRecord(0, "poison/0")], settings, tmp_path, "fp", painters)
    assert not list(tmp_path.glob("shard-*.tar"))


def test_task_loss_flags_and_norm_reach_the_model():
    from pipeline.repaint.job import RepaintPlan
    from pipeline.sources import open_source

    source = open_source("demo:8:32")

    def model(**flags):
        return RepaintPlan.from_config(GenerateConfig(source="demo:8:32", **flags), source).model

    assert model(task_weight=5.0).task_weight == 5.0
    off = model(task_weight=5.0, task_loss=False)
    assert off.task_weight == 0.0 and off.norm == "instance"
    assert model(repainter_norm="batch").norm == "batch"
    assert model().num_classes == len(source.classes)
    chosen = model(train_region_keep_prob=0.25, task_warmup=7)
    assert chosen.keep_prob == 0.25 and chosen.task_warmup == 7 and chosen.label_channels == 5
    # Training mixes kept and new regions; the shards are painted with every region new.
    plan = RepaintPlan.from_config(GenerateConfig(source="demo:8:32"), source)
    assert plan.model.keep_prob == 0.5 and plan.painting["keep_prob"] == 0.0
    assert model(repainter_steps=3).task_warmup == 3  # a warm-up longer than the training would never start
    defaults = GenerateConfig(source="demo:8:32"), GenerateConfig(source="imagefolder:/x", out="/tmp/x")
    assert [(c.segmenter, c.repainter_steps, c.repaint_size) for c in defaults] == [("demo", 300, 48),
                                                                                  ("fh", 2000, 64)]


def test_more_train_workers_than_cpus_is_refused_not_left_waiting(ray_address, tmp_path):
    with pytest.raises(ValueError, match="--train-workers 3 needs 3 CPUs; the Ray cluster has 2"):
        run_job(GenerateConfig(source="demo:8:32", out=str(tmp_path), variants=1, repainter_steps=1,
                               train_workers=3, **TINY))


def test_too_few_readable_images_to_train_on_is_named(ray_address, tmp_path):
    with pytest.raises(ValueError, match="the repainter needs at least 4 readable images, got 3"):
        run_job(GenerateConfig(source="demo:3:32", out=str(tmp_path), variants=1, repainter_steps=1, **TINY))


def test_a_finished_job_reruns_without_starting_ray(trained):
    # An --address the user names must be reachable, so starting Ray here would fail the rerun.
    argv = [sys.executable, str(REPO / "pipeline" / "generate.py"), "--source", "demo:24:48", "--out", str(trained),
            "--samples-per-shard", "8", "--variants", "2", "--repainter-steps", "3", "--train-workers", "2",
            "--repaint-size", "32", "--repainter-batch", "2", "--task-model", "resnet10t", "--no-progress",
            "--address", "127.0.0.1:9"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "reusing the finished training" in rerun.stderr
    assert "3 verified from an earlier run, 0 to write" in rerun.stderr
