"""kill -9 of the job driver at random points, then a resume: the same bytes as one clean run."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from manifests import read_manifest, verify_shard_set
from pipeline.job import run_job
from pipeline.job_config import GenerateConfig

REPO = Path(__file__).resolve().parents[1]
SOURCE, PER_SHARD, N_SHARDS = "demo:1200:64", 20, 60


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start_driver(out: Path, ray_address: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    args = ["--source", SOURCE, "--samples-per-shard", str(PER_SHARD), "--workers", "2",
            "--out", str(out), "--no-progress", "--variants", "0"]
    return subprocess.Popen([sys.executable, str(REPO / "pipeline" / "generate.py"), *args],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_after_progress(driver: subprocess.Popen, out: Path, more_shards: int) -> bool:
    """SIGKILL the driver once `more_shards` further shards stand; False if it ended first."""
    target = len(list(out.glob("shard-*.tar"))) + more_shards
    deadline = time.monotonic() + 120
    while driver.poll() is None and time.monotonic() < deadline:
        if len(list(out.glob("shard-*.tar"))) >= target:
            driver.send_signal(signal.SIGKILL)
            driver.wait(timeout=30)
            return True
        time.sleep(0.01)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 0, stderr.decode()[-2000:]
    return False


@pytest.mark.slow
def test_kill_nine_five_times_then_resume_is_byte_identical(ray_address, tmp_path):
    reference = tmp_path / "reference"
    run_job(GenerateConfig(source=SOURCE, out=str(reference), samples_per_shard=PER_SHARD,
                           workers=2, progress=False, variants=0))
    expected = {p.name: _sha(p) for p in reference.glob("shard-*.tar")}
    assert len(expected) == N_SHARDS
    expected["manifest.json"] = _sha(reference / "manifest.json")

    out = tmp_path / "crashy"
    rng = random.Random(1234)
    kills = 0
    for _ in range(5):
        driver = _start_driver(out, ray_address)
        kills += _kill_after_progress(driver, out, more_shards=rng.randint(1, 6))
        # Whatever stands under a final name is complete: never a partial shard.
        for shard in out.glob("shard-*.tar"):
            assert _sha(shard) == expected[shard.name], f"partial shard under final name {shard}"
        assert not (out / "manifest.json").exists(), "a manifest before every shard was done"
    assert kills == 5
    assert len(list(out.glob("shard-*.tar"))) < N_SHARDS

    finisher = _start_driver(out, ray_address)
    _, stderr = finisher.communicate(timeout=300)
    assert finisher.returncode == 0, stderr.decode()[-2000:]
    found = {p.name: _sha(p) for p in out.glob("shard-*.tar")}
    found["manifest.json"] = _sha(out / "manifest.json")
    assert found == expected
    assert verify_shard_set(out) == [] and read_manifest(out)["totals"]["samples"] == 1200
    assert not list(out.glob(".*.partial"))
