"""The shard contract: field names, keys, extensions and URLs that producer and consumer share.

A shard set is a folder of `shard-NNNNNN.tar` files plus `manifest.json`. Each sample is one source
image: the original under `jpg` or `png`, its class index under `cls` (classification sources),
metadata under `json`, and, when the repainter ran, variants under `rp0.jpg` ... `rpN-1.jpg` (at the
original's size, so its boxes hold for every variant) with the segment map they were painted from
under `seg.png` (16-bit ids).
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlparse

FORMAT_NAME = "repaint-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "shard-{index:06d}.tar"
SHARD_NAME_RE = re.compile(r"^shard-\d{6}\.tar$")

# webdataset splits a member name at the first dot of its basename: everything before is the key.
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")

FIELD_JSON = "json"
FIELD_CLS = "cls"
ORIGINAL_FIELDS = ("jpg", "png")

# The last dotted part of a field decides how a reader decodes it; anything else is refused, and
# pickled formats (`pyd`, `pth`, ...) in particular are never written nor decoded.
ALLOWED_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "json", "cls", "txt"})
FORBIDDEN_EXTENSIONS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "npy", "npz", "mp"})

ALLOWED_URL_SCHEMES = ("file", "http", "https", "s3")

# Every random draw for a sample comes from this rule, so output is independent of worker count.
SEED_RULE = "sha256(':'.join(map(str, (seed, key, variant, ...))))[:8] as little-endian uint64, >> 1"


def derive_seed(*parts: object) -> int:
    """SEED_RULE: sha256 of the parts joined by ':', as a non-negative int64. The producer (variant
    codes, batches) and the consumer (variant choice, augmentation) both draw through this one rule."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ContractError(ValueError):
    """A name, key, field or URL that breaks the shard contract."""


def make_key(prefix: str, index: int) -> str:
    """The synthetic, stable key of the sample at `index` of a shard set."""
    key = f"{prefix}-{index:08d}"
    check_key(key)
    return key


def check_key(key: str) -> None:
    if not KEY_RE.match(key):
        raise ContractError(f"sample key {key!r} does not match {KEY_RE.pattern}")


def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index=index)


def variant_field(variant: int, ext: str = "jpg") -> str:
    return f"rp{variant}.{ext}"


def field_extension(field: str) -> str:
    """The part of a field name that decides its decoding: `rp0.jpg` -> `jpg`."""
    return field.rsplit(".", 1)[-1].lower()


def check_field(field: str) -> None:
    ext = field_extension(field)
    if ext in FORBIDDEN_EXTENSIONS:
        raise ContractError(f"field {field!r}: extension {ext!r} is a pickle format and is refused")
    if ext not in ALLOWED_EXTENSIONS:
        raise ContractError(
            f"field {field!r}: extension {ext!r} is not in the allowlist {sorted(ALLOWED_EXTENSIONS)}"
        )


def split_member_name(name: str) -> tuple[str, str]:
    """Split a tar member name into (key, field) the way webdataset does."""
    directory, _, base = name.rpartition("/")
    key, dot, field = base.partition(".")
    if not dot:
        raise ContractError(f"tar member {name!r} has no field extension")
    return (f"{directory}/{key}" if directory else key), field


def check_shard_url(url: str) -> str:
    """Refuse anything but local paths and allowlisted schemes, before anything is opened.

    `pipe:` URLs run shell commands inside webdataset, so a shared manifest must never name one.
    """
    if url.startswith("pipe:"):
        raise ContractError(f"shard URL {url!r}: 'pipe:' URLs run shell commands and are refused")
    scheme = urlparse(url).scheme
    if scheme == "" or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):
        return url  # a local path (or a Windows drive letter)
    if scheme not in ALLOWED_URL_SCHEMES:
        raise ContractError(
            f"shard URL {url!r}: scheme {scheme!r} is not in the allowlist {ALLOWED_URL_SCHEMES}"
        )
    return url
