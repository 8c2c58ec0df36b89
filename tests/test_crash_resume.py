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
SPEC = ["--source", "demo:480:64", "--samples-per-shard", "20", "--workers", "2"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start_driver(out: Path, ray_address: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    return subprocess.Popen([sys.executable, str(REPO / "pipeline" / "generate.py"), *SPEC,
                             "--out", str(out), "--no-progress"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_kill_nine_five_times_then_resume_is_byte_identical(ray_address, tmp_path):
    reference = tmp_path / "reference"
    run_job(GenerateConfig(source="demo:480:64", out=str(reference), samples_per_shard=20,
                           workers=2, progress=False))
    expected = {p.name: _sha(p) for p in reference.glob("shard-*.tar")}
    expected["manifest.json"] = _sha(reference / "manifest.json")

    out = tmp_path / "crashy"
    rng = random.Random(1234)
    kills, kills_mid_job = 0, 0
    for _ in range(5):
        driver = _start_driver(out, ray_address)
        time.sleep(rng.uniform(1.5, 6.0))
        if driver.poll() is None:
            driver.send_signal(signal.SIGKILL)
            kills += 1
        driver.wait(timeout=60)
        written = len(list(out.glob("shard-*.tar")))
        kills_mid_job += 0 < written < 24
        # Whatever stands under a final name is complete: never a partial shard.
        for shard in out.glob("shard-*.tar"):
            assert _sha(shard) == expected[shard.name], f"partial shard under final name {shard}"
    assert kills >= 3, "the job finished before it could be killed; make it longer"
    assert kills_mid_job >= 1, "no kill landed while some but not all shards were written"

    finisher = _start_driver(out, ray_address)
    assert finisher.wait(timeout=300) == 0
    found = {p.name: _sha(p) for p in out.glob("shard-*.tar")}
    found["manifest.json"] = _sha(out / "manifest.json")
    assert found == expected
    assert verify_shard_set(out) == [] and read_manifest(out)["totals"]["samples"] == 480
    assert not list(out.glob(".*.partial"))
