"""Manifest schema, atomic read/write, and verification of a shard set against its manifest."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tarfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
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
from .objectstore import ObjectStoreError, is_object_url, join_url, object_size, open_object, read_object


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


def sha256_stream(stream: BinaryIO, chunk: int = 1 << 20) -> str:
    """The sha256 of what is left to read in `stream` (a file, or an object store's body)."""
    digest = hashlib.sha256()
    while block := stream.read(chunk):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def manifest_path(path: str | os.PathLike) -> Path | str:
    """Accept a shard-set folder or the manifest file itself (an object-store URL stays a URL)."""
    if is_object_url(path):
        return str(path) if str(path).endswith(".json") else join_url(str(path), MANIFEST_NAME)
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


def write_manifest(directory: str | os.PathLike, manifest: dict) -> Path:
    validate_manifest(manifest, str(directory))
    target = Path(directory) / MANIFEST_NAME
    atomic_write_bytes(target, dumps_canonical(manifest).encode())
    return target


def read_manifest(path: str | os.PathLike) -> dict:
    if is_object_url(path):
        return load_manifest(path)[0]
    path = manifest_path(path)
    if not path.parent.is_dir():
        raise ManifestError(f"{path.parent}: no such folder (expected a shard-set folder or its manifest.json)")
    if path.exists() and not path.is_file():
        raise ManifestError(f"{path}: not a regular file")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest here (expected {MANIFEST_NAME})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from None
    except RecursionError:
        raise ManifestError(f"{path}: JSON nested too deeply to be a manifest") from None
    validate_manifest(manifest, str(path))
    return manifest


SCHEMA_PATH = Path(__file__).with_name(f"schema-v{FORMAT_VERSION}.json")


@functools.cache
def _schema_validator():
    import jsonschema  # loaded on first use: importing manifests stays cheap

    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def _field_path(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "(top level)"


def validate_manifest(manifest: Any, where: str) -> None:
    """Check a manifest against schema-v1.json, then across fields; the first problem names its field."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{where}: manifest must be a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise ManifestError(f"{where}: format is {manifest.get('format')!r}, not {FORMAT_NAME!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{where}: format_version {manifest.get('format_version')!r} is not supported "
            f"(this code reads version {FORMAT_VERSION})"
        )
    shards = manifest.get("shards")
    for i, shard in enumerate(shards if isinstance(shards, list) else []):
        if isinstance(shard, dict) and isinstance(shard.get("name"), str):  # refused before anything else
            try:
                check_shard_name(shard["name"])
            except ContractError as exc:
                raise ManifestError(f"{where}: shards[{i}].name: {exc}") from None
    errors = sorted(_schema_validator().iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise ManifestError(f"{where}: {_field_path(first.absolute_path)}: {first.message}{more}")
    problem = _cross_field_problem(manifest)
    if problem:
        raise ManifestError(f"{where}: {problem}")


def _cross_field_problem(manifest: dict) -> str | None:
    shards, totals = manifest["shards"], manifest["totals"]
    names: set[str] = set()
    key_owner: dict[str, str] = {}
    for i, shard in enumerate(shards):
        name = shard["name"]
        if name in names:
            return f"shards[{i}].name: {name!r} is listed twice"
        names.add(name)
        for key in {shard["first_key"], shard["last_key"]} - {None}:
            if key in key_owner:
                return f"shards[{i}]: key {key!r} is also in {key_owner[key]} (keys are unique across shards)"
            key_owner[key] = name
    sums = {"samples": (sum(s["samples"] for s in shards), "the shards' samples add up to"),
            "bytes": (sum(s["bytes"] for s in shards), "the shards' bytes add up to"),
            "shards": (len(shards), "the manifest lists shards:"),
            "skipped": (len(manifest["skipped"]), "the manifest lists skipped inputs:")}
    for field, (value, what) in sums.items():
        if totals[field] != value:
            return f"totals.{field} is {totals[field]}, but {what} {value}"
    if totals["inputs"] != totals["samples"] + totals["skipped"]:
        return (f"totals.inputs is {totals['inputs']}, but samples + skipped = "
                f"{totals['samples']} + {totals['skipped']} (every input is written or skipped)")
    return None


def check_shard_name(name: str) -> None:
    """A shard a manifest lists lies in its set: a relative path with no `..`, or a URL (then
    `resolve_shard` requires it under the set's own base)."""
    check_shard_url(name)
    if "://" in name:
        return
    parts = Path(name).parts
    if os.path.isabs(name) or ".." in parts or "\\" in name or not parts:
        raise ContractError(f"shard name {name!r} is not a relative path inside the shard set's folder")


def _is_remote(location: str) -> bool:
    return urlparse(location).scheme in ("http", "https")


def load_manifest(location: str | os.PathLike) -> tuple[dict, str]:
    """Read a manifest from a folder, a file or an allowlisted http(s) URL; return it and its base.

    The location itself is checked against the URL allowlist before anything is opened.
    """
    location = str(location)
    check_shard_url(location)
    if is_object_url(location):
        return _load_object_manifest(location)
    if not _is_remote(location):
        mpath = manifest_path(location)
        return read_manifest(mpath), str(mpath.parent)
    url = location if location.endswith(".json") else location.rstrip("/") + "/" + MANIFEST_NAME
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (scheme checked)
            manifest = json.loads(response.read())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ManifestError(f"{url}: cannot read the manifest: {exc}") from None
    validate_manifest(manifest, url)
    return manifest, url.rsplit("/", 1)[0]


def _load_object_manifest(location: str) -> tuple[dict, str]:
    url = manifest_path(location)
    try:
        data = read_object(url)
    except ObjectStoreError as exc:
        raise ManifestError(f"{url}: cannot read the manifest: {exc}") from None
    if data is None:
        raise ManifestError(f"{url}: no manifest here (expected {MANIFEST_NAME}; a job still running writes it last)")
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ManifestError(f"{url}: not valid JSON: {exc}") from None
    validate_manifest(manifest, url)
    return manifest, url.rsplit("/", 1)[0]


def shard_urls(location: str | os.PathLike) -> list[str]:
    """The checked URL of every shard a manifest lists, relative names resolved beside it."""
    manifest, base = load_manifest(location)
    return [resolve_shard(base, shard["name"]) for shard in manifest["shards"]]


def resolve_shard(base: str, name: str) -> str:
    """The URL or path of shard `name` of the set at `base`; anything outside the set is refused."""
    check_shard_name(name)
    if "://" in name:
        if not name.startswith(base.rstrip("/") + "/"):
            raise ContractError(f"shard URL {name!r} is outside the shard set's own base {base!r}")
        return name
    if _is_remote(base) or is_object_url(base):
        return f"{base}/{name}"
    path = Path(base) / name
    if not path.resolve().is_relative_to(Path(base).resolve()):  # a symlink out of the folder
        raise ContractError(f"shard {name!r} resolves to {path.resolve()}, outside the shard set's folder {base}")
    return str(path)


def iter_tar_samples(path: str | os.PathLike | BinaryIO) -> Iterator[tuple[str, list[str]]]:
    """Yield (key, fields) per sample, grouping consecutive members as webdataset does. A stream
    (an object store's body) is read once, front to back."""
    key, fields = None, []
    opened = tarfile.open(fileobj=path, mode="r|") if hasattr(path, "read") else tarfile.open(path, mode="r:")
    with opened as tar:
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


def inspect_shard(path: str | os.PathLike | BinaryIO) -> dict:
    """Count samples of a shard and check its keys and fields; raises on an unreadable tar."""
    count, first, last, keys = 0, None, None, []
    for key, fields in iter_tar_samples(path):
        check_key(key)
        for field in fields:
            check_field(field)
        count += 1
        first = first or key
        last = key
        keys.append(key)
    return {"samples": count, "first_key": first, "last_key": last, "keys": keys}


@dataclass
class ShardProblem:
    shard: str
    what: str
    expected: Any
    found: Any

    def __str__(self) -> str:
        return f"{self.shard}: {self.what}: expected {self.expected}, found {self.found}"


class _HashingReader:
    """Hashes what one front-to-back read of a stream sees, so an object is downloaded only once."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.digest = raw, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        return data

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return self.digest.hexdigest()


Found = tuple[list[ShardProblem], dict | None]  # the problems, and what the tar holds when it could be read


def _check_local_shard(name: str, file: Path, shard: dict, check_sha256: bool) -> Found:
    if not file.exists():
        return [ShardProblem(name, "missing", "a file", "nothing")], None
    if not file.is_file():  # a FIFO or a folder: never opened
        return [ShardProblem(name, "not a regular file", "a file", "something else")], None
    problems = []
    size = file.stat().st_size
    if size != shard["bytes"]:
        problems.append(ShardProblem(name, "size mismatch", f"{shard['bytes']} bytes", f"{size} bytes"))
    if check_sha256 and (digest := sha256_file(file)) != shard["sha256"]:
        problems.append(ShardProblem(name, "sha256 mismatch", shard["sha256"], digest))
    return problems, _inspected(name, file, problems)


def _inspected(name: str, source: Path | BinaryIO, problems: list[ShardProblem]) -> dict | None:
    try:
        return inspect_shard(source)
    except (tarfile.TarError, ContractError, OSError) as exc:
        problems.append(ShardProblem(name, "unreadable", "a readable tar", f"error: {exc}"))
        return None


def _check_object_shard(name: str, url: str, shard: dict, check_sha256: bool) -> Found:
    size = object_size(url)
    if size is None:
        return [ShardProblem(name, "missing", "an object", f"nothing at {url}")], None
    problems = []
    if size != shard["bytes"]:
        problems.append(ShardProblem(name, "size mismatch", f"{shard['bytes']} bytes", f"{size} bytes"))
    with open_object(url) as body:
        reader = _HashingReader(body)
        found = _inspected(name, reader, problems)
        digest = reader.drain()
    if check_sha256 and digest != shard["sha256"]:
        problems.append(ShardProblem(name, "sha256 mismatch", shard["sha256"], digest))
    return problems, found


def verify_shard_set(path: str | os.PathLike, check_sha256: bool = True) -> list[ShardProblem]:
    """Check every shard's size, sha256, sample count, first and last key, and that no key is in two
    shards; return the problems found. A shard outside the set's folder (or prefix) is refused."""
    manifest, base = load_manifest(path)
    problems: list[ShardProblem] = []
    seen: dict[str, str] = {}
    for shard in manifest["shards"]:
        name = shard["name"]
        try:
            where = resolve_shard(base, name)
        except ContractError as exc:
            problems.append(ShardProblem(name, "refused", "a shard inside the set's folder", str(exc)))
            continue
        try:
            check = _check_object_shard if is_object_url(where) else _check_local_shard
            found_problems, found = check(name, where if is_object_url(where) else Path(where), shard, check_sha256)
        except OSError as exc:  # an object store that cannot be reached, credentials refused...
            problems.append(ShardProblem(name, "unreadable", "a readable shard", f"error: {exc}"))
            continue
        problems += found_problems
        if found is None:
            continue
        for what, label in (("samples", "sample count"), ("first_key", "first key"), ("last_key", "last key")):
            if found[what] != shard[what]:
                problems.append(ShardProblem(name, f"{label} mismatch", shard[what], found[what]))
        for key in found["keys"]:
            if key in seen:
                problems.append(ShardProblem(name, "duplicate key", f"{key} only in {seen[key]}", "it here too"))
            seen.setdefault(key, name)
    return problems
