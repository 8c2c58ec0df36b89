"""Where a job writes its shard set: a local folder, or an object-store prefix (`s3://bucket/prefix`).

Both offer the job the same few operations, and both keep the rule that a file is either whole or
absent. A folder gets each file under a unique temporary name, fsynced, then renamed. An object
store gets each shard uploaded by the node that wrote it (first to a local temporary file, hashed,
then uploaded); a PUT is atomic, and the shard's done-record is PUT only after its upload returned,
so a done-record never names a shard that is not complete in the bucket. Credentials come from
boto3's usual chain (`manifests.objectstore`), never from the job's settings.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from manifests.manifest import atomic_write_bytes, fsync_dir, sha256_file, sha256_stream
from manifests.objectstore import (
    is_object_url,
    join_url,
    object_size,
    open_object,
    put_bytes,
    put_file,
    read_object,
)

TEMP_SUFFIX = ".partial"


def _temporary_name(name: str) -> str:
    return f".{name.replace('/', '_')}.{os.getpid()}.{os.urandom(4).hex()}{TEMP_SUFFIX}"


class LocalStore:
    """A shard-set folder on this machine (or on a filesystem every node mounts)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.location = str(self.root)

    def url(self, name: str) -> str:
        return str(self.root / name)

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, name: str, data: bytes) -> None:
        (self.root / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / name, data)

    def size(self, name: str) -> int | None:
        path = self.root / name
        return path.stat().st_size if path.is_file() else None

    def sha256(self, name: str) -> str:
        return sha256_file(self.root / name)

    def temporary(self, name: str) -> Path:
        """Beside the final file, so the commit is a rename on one filesystem."""
        return self.root / _temporary_name(name)

    def commit(self, tmp: Path, name: str) -> None:
        os.replace(tmp, self.root / name)
        fsync_dir(self.root)

    @contextlib.contextmanager
    def local_copies(self, names: list[str]) -> Iterator[list[str]]:
        yield [str(self.root / n) for n in names]

    def remove_stale(self) -> int:
        """Temporaries left by a killed run are never reused; remove them and say how many."""
        stale = list(self.root.glob(f".*{TEMP_SUFFIX}"))
        stale += list(self.root.glob(".progress/.*.tmp")) + list(self.root.glob(".*.tmp"))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)


class ObjectStore:
    """A shard-set prefix in a bucket. Temporaries live in this node's temp folder and are removed
    whatever happens; an interrupted upload leaves no object (S3 shows a PUT whole or not at all)."""

    def __init__(self, url: str):
        self.location = url.rstrip("/")

    def url(self, name: str) -> str:
        return join_url(self.location, name)

    def read_bytes(self, name: str) -> bytes | None:
        return read_object(self.url(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        put_bytes(self.url(name), data)

    def size(self, name: str) -> int | None:
        return object_size(self.url(name))

    def sha256(self, name: str) -> str:
        with open_object(self.url(name)) as body:
            return sha256_stream(body)

    def temporary(self, name: str) -> Path:
        return Path(tempfile.gettempdir()) / _temporary_name(name)

    def commit(self, tmp: Path, name: str) -> None:
        try:
            put_file(self.url(name), tmp)
        finally:
            tmp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def local_copies(self, names: list[str]) -> Iterator[list[str]]:
        """Download `names` into a temporary folder for the driver's read-back (preview, quality)."""
        with tempfile.TemporaryDirectory(prefix="shards-") as folder:
            paths = []
            for name in names:
                path = Path(folder) / name
                path.write_bytes(self.read_bytes(name) or b"")
                paths.append(str(path))
            yield paths

    def remove_stale(self) -> int:
        return 0  # nothing partial is ever visible in a bucket


Store = LocalStore | ObjectStore


def open_store(location: str | os.PathLike) -> Store:
    return ObjectStore(str(location)) if is_object_url(location) else LocalStore(location)
