"""The classification trainer end to end: torchrun DDP on gloo, kill + resume, eval-only, guards."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import webdataset as wds
import yaml

from tests.shardsets import make_shard_set
from train.checkpoint import load_checkpoint
from train.config import parse_args
from train.engine import StepContext, train_one_epoch

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "test_resnet", "--img-size", "32", "--no-progress", "--lr", "0.05"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _classify(args: list[str], torchrun: int = 0) -> subprocess.Popen:
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}",
               "--master_port", str(29500 + os.getpid() % 1000), str(REPO / "train" / "classify.py")]
    else:
        cmd = [sys.executable, str(REPO / "train" / "classify.py")]
    return subprocess.Popen(cmd + TINY + args, cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: int = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory) -> Path:
    return make_shard_set(tmp_path_factory.mktemp("shards"), 150, per_shard=64, variants=2)  # 64, 64, 22


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrun_two_gloo_processes_uneven_shards_equal_steps(demo_shards, tmp_path):
    run = tmp_path / "run"
    _finish(_classify(["--shards", str(demo_shards), "--val", str(demo_shards), "--batch-size", "8",
                       "--workers", "2", "--mix", "sage", "--epochs", "2", "--finetune-epochs", "1",
                       "--val-shift", "gray,jpeg:5", "--out", str(run)], torchrun=2))
    rows = _rows(run)
    assert [(r["phase"], r["epoch"]) for r in rows] == [("train", "0"), ("train", "1"), ("finetune", "0")]
    assert all(r["steps_min"] == r["steps_max"] == "9" for r in rows)  # 150 // (2 x 8)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["val_samples"] == 150
    assert 0 <= summary["top1"] <= 100 and summary["top5"] >= summary["top1"]
    assert 0 <= summary["top1_gray"] <= 100 and 0 <= summary["top1_jpeg5"] <= 100  # --val-shift copies
    assert rows[-1]["top1_gray"] != "" and rows[-1]["top1_jpeg5"] != ""
    assert (run / "args.yaml").exists() and (run / "last.pth").exists()
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1  # one writer per run, not per epoch
    settings = yaml.safe_load((run / "args.yaml").read_text())
    assert settings["mix"] == "sage" and settings["scale"] == [0.35, 1.0] and settings["out"] == str(run)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_mid_epoch_and_resumed_gives_the_same_weights(tmp_path):
    shards = make_shard_set(tmp_path / "shards", 384, per_shard=64, variants=2)
    common = ["--shards", str(shards), "--batch-size", "8", "--workers", "2", "--mix", "mixup", "--model-ema",
              "--epochs", "2", "--finetune-epochs", "1", "--checkpoint-every", "4"]
    _finish(_classify(common + ["--out", str(tmp_path / "whole")]))

    crashy = tmp_path / "crashy"
    proc = _classify(common + ["--out", str(crashy)])
    killed_at, last_mtime = None, 0.0
    while proc.poll() is None and killed_at is None:
        ckpt = crashy / "last.pth"
        if ckpt.exists() and ckpt.stat().st_mtime != last_mtime:
            last_mtime = ckpt.stat().st_mtime
            position = load_checkpoint(ckpt)["position"]
            if position["phase"] == 0 and position["epoch"] == 1 and position["step"] > 0:
                proc.send_signal(signal.SIGKILL)
                killed_at = position
        time.sleep(0.005)
    proc.communicate(timeout=60)
    assert killed_at is not None, "the run ended before it could be killed mid-epoch"
    _finish(_classify(common + ["--out", str(crashy), "--resume"]))

    whole, resumed = load_checkpoint(tmp_path / "whole" / "last.pth"), load_checkpoint(crashy / "last.pth")
    for part in ("model", "ema"):
        assert whole[part].keys() == resumed[part].keys()
        for name, tensor in whole[part].items():
            assert torch.equal(tensor, resumed[part][name]), f"{part}.{name} differs after resume"


@pytest.mark.timeout(300)
def test_eval_only_on_a_shard_set_and_on_an_image_folder(demo_shards, tmp_path):
    run = tmp_path / "run"
    _finish(_classify(["--shards", str(demo_shards), "--batch-size", "16", "--workers", "0", "--mix", "none",
                       "--epochs", "1", "--finetune-epochs", "0", "--out", str(run)]))
    folder = tmp_path / "folder"
    classes = json.loads((demo_shards / "manifest.json").read_text())["classes"]
    for cls in classes:
        (folder / cls).mkdir(parents=True)
    for sample in wds.WebDataset(sorted(str(p) for p in demo_shards.glob("shard-*.tar")), shardshuffle=False):
        (folder / classes[int(sample["cls"])] / f"{sample['__key__']}.png").write_bytes(sample["png"])
    results = []
    for val in (demo_shards, folder):
        out = _finish(_classify(["--eval-only", "--checkpoint", str(run / "last.pth"), "--val", str(val),
                                 "--workers", "0"]))
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["val_samples"] == results[1]["val_samples"] == 150
    assert results[0]["top1"] == pytest.approx(results[1]["top1"])
    (folder / classes[0]).rename(folder / "zebra")
    proc = _classify(["--eval-only", "--checkpoint", str(run / "last.pth"), "--val", str(folder), "--workers", "0"])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and f"{folder}: classes" in out and "differ from the model's" in out


def test_all_ranks_skip_a_non_finite_step_together():
    model = torch.nn.Linear(4, 3)
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def criterion(logits, target):
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(logits, target)
        return loss * float("nan") if len(calls) == 1 else loss

    class NoSched:
        def step_update(self, num_updates):
            pass

    ctx = StepContext(model=model, criterion=criterion, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                      scheduler=NoSched(), device=torch.device("cpu"), num_classes=3, seed=0, rank=0)
    batch = (torch.randn(2, 4), torch.tensor([0, 1]), torch.tensor([0, 0]))
    stats = train_one_epoch(ctx, [batch], epoch_key=0, start_step=0, total_steps=1, progress=False)
    assert stats.skipped_steps == 1 and stats.steps == 0 and ctx.num_updates == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    stats = train_one_epoch(ctx, [batch], epoch_key=0, start_step=1, total_steps=2, progress=False)
    assert stats.steps == 1 and not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("argv, message", [
    ([], "--shards is required"),
    (["--shards", "x", "--batch-size", "0"], "invalid value for --batch-size"),
    (["--shards", "x", "--mix", "mixup", "--batch-size", "7"], "needs an even --batch-size"),
    (["--eval-only", "--val", "x"], "--eval-only needs --checkpoint CKPT and --val PATH"),
    (["--shards", "x", "--mix", "magic"], "--mix magic: must be one of none, mixup, cutmix, sage"),
    (["--shards", "x", "--scale", "0.9", "0.2"], "invalid value for --scale 0.9 0.2: must be 0 < MIN <= MAX <= 1"),
    (["--shards", "x", "--finetune-lr", "0"], "invalid value for --finetune-lr 0.0: must be > 0"),
    (["--shards", "x", "--val", "v", "--val-shift", "sepia"], "--val-shift 'sepia': unknown shift"),
    (["--shards", "x", "--val-shift", "gray"], "--val-shift needs --val"),
    (["--shards", "x", "--sage-loss", "bce"], "--sage-loss bce: must be one of official, ce"),
    (["--shards", "x", "--hue-jitter", "0.7"], "invalid value for --hue-jitter 0.7: must be in [0, 0.5]"),
    (["--shards", "x", "--grayscale-prob", "2"], "invalid value for --grayscale-prob 2.0: must be in [0, 1]"),
])
def test_wrong_flags_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_yaml_config_sets_defaults_and_unknown_keys_are_refused(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("batch_size: 12\nmix: cutmix\n")
    args = parse_args(["--config", str(config), "--shards", "x", "--batch-size", "16"])
    assert args.batch_size == 16 and args.mix == "cutmix"
    config.write_text("batchsize: 12\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(config), "--shards", "x"])
    assert "unknown keys ['batchsize']" in capsys.readouterr().err
    config.write_text("lr: [1]\nepochs: 2.5\n")  # YAML values are checked like flags (argparse converts none)
    with pytest.raises(SystemExit):
        parse_args(["--config", str(config), "--shards", "x"])
    err = capsys.readouterr().err
    assert "--lr 1: must be of type float" in err and "--epochs 2.5: must be of type int" in err


def test_missing_shard_set_and_unreadable_checkpoint_are_named(tmp_path):
    proc = _classify(["--shards", str(tmp_path / "nope"), "--workers", "0"])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1 and f"error: {tmp_path / 'nope'}: no manifest here" in out and "Traceback" not in out
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth: not a loadable checkpoint"):
        load_checkpoint(bad)


def test_verify_drops_a_corrupted_shard_before_training(tmp_path, caplog):
    from train.distributed import DistInfo
    from train.runner import _verified  # noqa: F401 (the task-independent shard check)
    from train.stream import open_shard_set

    root = make_shard_set(tmp_path, 30, per_shard=10)
    data = bytearray((root / "shard-000001.tar").read_bytes())
    data[2000] ^= 0x40
    (root / "shard-000001.tar").write_bytes(bytes(data))
    kept = _verified(open_shard_set(str(root)), DistInfo(0, 1, 0, torch.device("cpu")))
    assert [Path(s.url).name for s in kept.shards] == ["shard-000000.tar", "shard-000002.tar"]
    assert "--verify: shard-000001.tar: sha256 mismatch: expected" in caplog.text


@pytest.mark.timeout(300)
def test_eval_every_validates_only_on_those_epochs_and_at_the_end(demo_shards, tmp_path):
    run = tmp_path / "run"
    _finish(_classify(["--shards", str(demo_shards), "--val", str(demo_shards), "--batch-size", "32",
                       "--workers", "0", "--mix", "none", "--epochs", "3", "--finetune-epochs", "1",
                       "--eval-every", "2", "--out", str(run)]))
    rows = [(r["phase"], r["epoch"], r["top1"] != "") for r in _rows(run)]
    assert rows == [("train", "0", False), ("train", "1", True), ("train", "2", True), ("finetune", "0", True)]


def test_colour_jitter_flags_reach_the_training_transform():
    from torchvision import transforms

    from train.classification import ClassificationTask

    def parts(argv):
        transform = ClassificationTask().train_decoder(parse_args(["--shards", "x", *argv])).transform
        return {type(t): t for t in transform.transforms}

    plain = parts([])
    assert plain[transforms.ColorJitter].hue is None and transforms.RandomGrayscale not in plain
    jittered = parts(["--color-jitter", "0.4", "--hue-jitter", "0.25", "--grayscale-prob", "0.2"])
    assert jittered[transforms.ColorJitter].hue == (-0.25, 0.25)
    assert jittered[transforms.ColorJitter].saturation == (0.6, 1.4)
    assert jittered[transforms.RandomGrayscale].p == 0.2


def test_sage_loss_flag_picks_the_loss_of_both_passes():
    from timm.loss import SoftTargetCrossEntropy

    from train.classification import ClassificationTask
    from train.sage import softmax_bce

    official = ClassificationTask().phase_parts(parse_args(["--shards", "x", "--mix", "sage"]), 10)
    assert official["sage_loss"] == "official" and official["criterion"] is softmax_bce
    ce = ClassificationTask().phase_parts(parse_args(["--shards", "x", "--mix", "sage", "--sage-loss", "ce"]), 10)
    assert ce["sage_loss"] == "ce" and isinstance(ce["criterion"], SoftTargetCrossEntropy)
