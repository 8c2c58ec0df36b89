"""Shared fixtures: one Ray cluster for the whole session, real data from ../shared/data."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

# Token auth stays on, with the token in the environment, so Ray writes nothing under ~/.ray.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# One private temp folder for the session, removed at exit: what the tests' subprocesses leave in the
# temp dir (torchrun's torchelastic_* folders, an embedded Ray's session folders, which Ray puts under
# $TMPDIR/ray) goes there instead of /tmp. Short, because Ray's socket paths are limited.
_SESSION_TMP = tempfile.mkdtemp(prefix="rs", dir="/tmp")
os.environ["TMPDIR"] = _SESSION_TMP
tempfile.tempdir = None  # re-read TMPDIR
atexit.register(shutil.rmtree, _SESSION_TMP, ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data_or_skip(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared data set, checked out beside the repo)")
    return path


@pytest.fixture(scope="session")
def ray_address():
    """A local Ray cluster shared by every Ray-backed test; its address, for subprocess drivers."""
    import ray

    from pipeline.job import quiet_workers

    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths are limited
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             object_store_memory=200 * 1024**2, _temp_dir=temp_dir,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
             job_config=quiet_workers())
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def cifar_subset(tmp_path_factory) -> Path:
    """20 CIFAR-10 training images per class, extracted in ImageNet's folder layout."""
    archive = shared_data_or_skip("cifar10", "train.tar")
    root = tmp_path_factory.mktemp("cifar")
    per_class: dict[str, int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3:
                continue
            cls = parts[-2]
            if per_class.get(cls, 0) >= 20:
                if len(per_class) == 10 and all(v >= 20 for v in per_class.values()):
                    break
                continue
            per_class[cls] = per_class.get(cls, 0) + 1
            target = root / "train" / cls / parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    return root / "train"


@pytest.fixture(scope="session")
def coco128() -> tuple[Path, Path]:
    base = shared_data_or_skip("coco128")
    return base / "annotations" / "instances_train2017.json", base / "images" / "train2017"


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on loopback (tests/s3server.py), shared by the object-store tests."""
    from tests.s3server import start_s3_server

    server = start_s3_server()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3, monkeypatch) -> str:
    """A fresh bucket, with this process's AWS_* variables pointing at the server."""
    import uuid

    name = f"shards-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=name)
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return name
