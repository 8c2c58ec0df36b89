"""Manifest schema, atomic read/write, and verification of a shard set against its manifest."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .contract import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    ContractError,
    check_field,
    check_key,
    check_shard_url,
    split_member_name,
)

REQUIRED_TOP_LEVEL = (
    "format", "format_version", "shards", "totals", "source", "skipped", "variants", "seed",
    "seed_rule", "config", "provenance",
)
REQUIRED_SHARD = ("name", "bytes", "sha256", "samples", "first_key", "last_key")


class ManifestError(ValueError):
    """A manifest that cannot be read or does not follow the schema; names the file."""


def dumps_canonical(obj: Any) -> str:
    """JSON with sorted keys and fixed separators: equal content gives equal bytes."""
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True) + "\n"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a unique temporary name in the same folder, fsync, rename, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: str | os.PathLike) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manifest_path(path: str | os.PathLike) -> Path:
    """Accept a shard-set folder or the manifest file itself."""
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def write_manifest(directory: str | os.PathLike, manifest: dict) -> Path:
    validate_manifest(manifest, str(directory))
    target = Path(directory) / MANIFEST_NAME
    atomic_write_bytes(target, dumps_canonical(manifest).encode())
    return target


def read_manifest(path: str | os.PathLike) -> dict:
    path = manifest_path(path)
    if not path.parent.is_dir():
        raise ManifestError(f"{path.parent}: no such folder (expected a shard-set folder or its manifest.json)")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest here (expected {MANIFEST_NAME})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from None
    validate_manifest(manifest, str(path))
    return manifest


def validate_manifest(manifest: Any, where: str) -> None:
    if not isinstance(manifest, dict):
        raise ManifestError(f"{where}: manifest must be a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise ManifestError(f"{where}: format is {manifest.get('format')!r}, not {FORMAT_NAME!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{where}: format_version {manifest.get('format_version')!r} is not supported "
            f"(this code reads version {FORMAT_VERSION})"
        )
    missing = [k for k in REQUIRED_TOP_LEVEL if k not in manifest]
    if missing:
        raise ManifestError(f"{where}: missing fields {missing}")
    for i, shard in enumerate(manifest["shards"]):
        absent = [k for k in REQUIRED_SHARD if k not in shard]
        if absent:
            raise ManifestError(f"{where}: shard #{i} is missing {absent}")
        try:
            check_shard_url(shard["name"])
        except ContractError as exc:
            raise ManifestError(f"{where}: shard #{i}: {exc}") from None


def _is_remote(location: str) -> bool:
    return urlparse(location).scheme in ("http", "https")


def load_manifest(location: str | os.PathLike) -> tuple[dict, str]:
    """Read a manifest from a folder, a file or an allowlisted http(s) URL; return it and its base.

    The location itself is checked against the URL allowlist before anything is opened.
    """
    location = str(location)
    check_shard_url(location)
    if not _is_remote(location):
        mpath = manifest_path(location)
        return read_manifest(mpath), str(mpath.parent)
    url = location if location.endswith(".json") else location.rstrip("/") + "/" + MANIFEST_NAME
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (scheme checked)
            manifest = json.loads(response.read())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{url}: cannot read the manifest: {exc}") from None
    validate_manifest(manifest, url)
    return manifest, url.rsplit("/", 1)[0]


def shard_urls(location: str | os.PathLike) -> list[str]:
    """The checked URL of every shard a manifest lists, relative names resolved beside it."""
    manifest, base = load_manifest(location)
    return [resolve_shard(base, shard["name"]) for shard in manifest["shards"]]


def resolve_shard(base: str, name: str) -> str:
    check_shard_url(name)
    if "://" in name or os.path.isabs(name):
        return name
    return f"{base}/{name}" if _is_remote(base) else str(Path(base) / name)


def iter_tar_samples(path: str | os.PathLike) -> Iterator[tuple[str, list[str]]]:
    """Yield (key, fields) per sample, grouping consecutive members as webdataset does."""
    key, fields = None, []
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            member_key, field = split_member_name(member.name)
            if member_key != key and key is not None:
                yield key, fields
                fields = []
            key = member_key
            fields.append(field)
    if key is not None:
        yield key, fields


def inspect_shard(path: str | os.PathLike) -> dict:
    """Count samples of a shard and check its keys and fields; raises on an unreadable tar."""
    count, first, last = 0, None, None
    for key, fields in iter_tar_samples(path):
        check_key(key)
        for field in fields:
            check_field(field)
        count += 1
        first = first or key
        last = key
    return {"samples": count, "first_key": first, "last_key": last}


@dataclass
class ShardProblem:
    shard: str
    what: str
    expected: Any
    found: Any

    def __str__(self) -> str:
        return f"{self.shard}: {self.what}: expected {self.expected}, found {self.found}"


def verify_shard_set(path: str | os.PathLike, check_sha256: bool = True) -> list[ShardProblem]:
    """Check every local shard's size, sha256 and sample count; return the problems found."""
    mpath = manifest_path(path)
    manifest = read_manifest(mpath)
    problems: list[ShardProblem] = []
    for shard in manifest["shards"]:
        name = shard["name"]
        file = mpath.parent / name
        if not file.is_file():
            problems.append(ShardProblem(name, "missing", "a file", "nothing"))
            continue
        size = file.stat().st_size
        if size != shard["bytes"]:
            problems.append(ShardProblem(name, "size mismatch", f"{shard['bytes']} bytes", f"{size} bytes"))
        if check_sha256:
            digest = sha256_file(file)
            if digest != shard["sha256"]:
                problems.append(ShardProblem(name, "sha256 mismatch", shard["sha256"], digest))
        try:
            found = inspect_shard(file)["samples"]
        except (tarfile.TarError, ContractError, OSError) as exc:
            problems.append(ShardProblem(name, "unreadable", "a readable tar", f"error: {exc}"))
            continue
        if found != shard["samples"]:
            problems.append(ShardProblem(name, "sample count mismatch", shard["samples"], found))
    return problems
