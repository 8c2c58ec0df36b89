"""Shard sets in object storage, against a real S3-compatible server (moto) on loopback: the job
writes to s3:// from Ray tasks, is killed and resumed, the set verifies (and names a flipped byte),
the trainer streams it, and missing or wrong credentials are named with the bucket."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from manifests import ManifestError, load_manifest, read_manifest, verify_shard_set
from manifests.objectstore import ObjectStoreError, object_size
from pipeline.job import run_job
from pipeline.job_config import GenerateConfig
from tests.shardsets import make_shard_set

REPO = Path(__file__).resolve().parents[1]
SOURCE, PER_SHARD = "demo:600:48", 20  # 30 shards


def _upload(s3, folder: Path, bucket: str, prefix: str) -> str:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.client().upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")
    return f"s3://{bucket}/{prefix}"


def _generate(out: str, env: dict) -> subprocess.Popen:
    args = ["--source", SOURCE, "--samples-per-shard", str(PER_SHARD), "--workers", "2", "--variants", "0",
            "--out", out, "--no-progress"]
    return subprocess.Popen([sys.executable, str(REPO / "pipeline" / "generate.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _done_records(s3, bucket: str, prefix: str) -> int:
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/.progress/")
    return listed.get("KeyCount", 0)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_job_writes_to_s3_is_killed_resumes_and_verifies_like_a_local_set(ray_address, s3, bucket, tmp_path):
    local = tmp_path / "local"
    run_job(GenerateConfig(source=SOURCE, out=str(local), samples_per_shard=PER_SHARD, workers=2, progress=False,
                           variants=0))
    url = f"s3://{bucket}/sets/demo"
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    driver = _generate(url, env)
    deadline = time.monotonic() + 120
    while driver.poll() is None and _done_records(s3, bucket, "sets/demo") < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert driver.poll() is None, "the job ended before it could be killed: " + driver.communicate()[0][-2000:]
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    assert object_size(f"{url}/manifest.json") is None  # the manifest comes last
    resumed = _generate(url, env)
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log[-3000:]
    verified = int(re.search(r"(\d+) verified from an earlier run", log).group(1))
    assert 3 <= verified < 30, log[-2000:]
    # The contract does not change with the storage: the same shards, the same manifest entries.
    assert read_manifest(url)["shards"] == read_manifest(local)["shards"]
    assert verify_shard_set(url) == []
    cli = subprocess.run([sys.executable, "-m", "manifests", "verify", url], cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 0 and cli.stdout.startswith("OK 30 shards"), cli.stdout + cli.stderr
    copied = tmp_path / "copied"  # a set copied from the bucket to a disk verifies the same
    for key in s3.client().list_objects_v2(Bucket=bucket, Prefix="sets/demo/")["Contents"]:
        target = copied / key["Key"].removeprefix("sets/demo/")
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.client().download_file(bucket, key["Key"], str(target))
    assert verify_shard_set(copied) == []
    # A flipped byte in a stored shard is named by verify.
    name = read_manifest(url)["shards"][7]["name"]
    data = bytearray(s3.client().get_object(Bucket=bucket, Key=f"sets/demo/{name}")["Body"].read())
    data[1000] ^= 0xFF
    s3.client().put_object(Bucket=bucket, Key=f"sets/demo/{name}", Body=bytes(data))
    problems = verify_shard_set(url)
    assert [(p.shard, p.what) for p in problems] == [(name, "sha256 mismatch")]
    cli = subprocess.run([sys.executable, "-m", "manifests", "verify", url], cwd=REPO, capture_output=True, text=True)
    assert cli.returncode == 1 and f"BAD {name}: sha256 mismatch" in cli.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_classifier_trains_on_a_set_streamed_from_the_bucket(s3, bucket, tmp_path):
    url = _upload(s3, make_shard_set(tmp_path / "set", 40, per_shard=16, variants=1), bucket, "cls")
    run = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train" / "classify.py"), "--shards", url, "--val", url, "--verify",
           "--model", "test_resnet", "--img-size", "32", "--batch-size", "8", "--workers", "2", "--epochs", "1",
           "--finetune-epochs", "0", "--mix", "none", "--no-progress", "--out", str(run)]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_samples"] == 40 and 0 <= summary["top1"] <= 100


def test_missing_or_wrong_credentials_and_a_missing_manifest_are_named(s3, bucket, monkeypatch, tmp_path):
    url = _upload(s3, make_shard_set(tmp_path / "set", 12, per_shard=8), bucket, "small")
    assert verify_shard_set(url) == []
    with pytest.raises(ManifestError, match=r"no manifest here"):
        load_manifest(f"s3://{bucket}/elsewhere")
    with pytest.raises(ManifestError, match=r"bucket 'no-such-bucket'.*no such bucket"):
        load_manifest("s3://no-such-bucket/set")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(ManifestError, match=rf"bucket '{bucket}'.*access refused.*credentials are wrong"):
        load_manifest(url)
    with pytest.raises(ObjectStoreError, match=rf"bucket '{bucket}'.*access refused"):
        run_job(GenerateConfig(source="demo:8:32", out=f"s3://{bucket}/job", variants=0, progress=False))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    cli = subprocess.run([sys.executable, "-m", "manifests", "verify", url], cwd=REPO, capture_output=True,
                         text=True, env=dict(os.environ))
    assert cli.returncode == 2 and f"bucket '{bucket}'" in cli.stderr and "no credentials found" in cli.stderr


def test_object_store_out_needs_a_bucket_and_a_work_folder_for_training():
    with pytest.raises(ValueError, match="needs a bucket"):
        GenerateConfig(source="demo:8:32", out="s3:///prefix", variants=0)
    with pytest.raises(ValueError, match="--work DIR"):
        GenerateConfig(source="demo:8:32", out="s3://bucket/prefix", variants=2)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_repainted_set_to_s3_trains_in_work_and_paints_like_a_local_run(ray_address, s3, bucket, tmp_path):
    """The repainter trains in --work, its weights go to the bucket, the painting actors read them
    from there, and preview and quality are read back from the stored shards."""
    tiny = ["--source", "demo:24:48", "--samples-per-shard", "8", "--variants", "2", "--repainter-steps", "3",
            "--repaint-size", "32", "--repainter-batch", "2", "--task-model", "resnet10t", "--no-progress"]
    local = tmp_path / "local"
    run_job(GenerateConfig(source="demo:24:48", out=str(local), samples_per_shard=8, variants=2, repainter_steps=3,
                           repaint_size=32, repainter_batch=2, task_model="resnet10t", progress=False))
    url = f"s3://{bucket}/painted"
    done = subprocess.run([sys.executable, str(REPO / "pipeline" / "generate.py"), *tiny, "--out", url,
                           "--work", str(tmp_path / "work")], cwd=REPO, env={**os.environ, "RAY_ADDRESS": ray_address},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    manifest, reference = read_manifest(url), read_manifest(local)
    assert manifest["shards"] == reference["shards"]
    assert manifest["repainter"]["sha256"] == reference["repainter"]["sha256"]
    assert manifest["repainter"]["quality"] == reference["repainter"]["quality"]
    assert (tmp_path / "work" / "repainter" / "repainter.pt").is_file()
    for name in ("repainter/repainter.pt", "preview.png", "_info.json"):
        assert object_size(f"{url}/{name}") == (local / name).stat().st_size
    assert verify_shard_set(url) == []
