"""Shard sets in object storage (`s3://bucket/prefix`), through boto3.

Credentials, region and endpoint come from boto3's usual chain (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role; AWS_ENDPOINT_URL for an S3-compatible
server such as MinIO or moto), never from a manifest. One client per process: a client shared
across `fork` (DataLoader workers, Ray workers) is not safe, so the cache is keyed by pid.
Every failure is an `ObjectStoreError` naming the bucket and what went wrong.
"""

from __future__ import annotations

import functools
import os
from typing import Any, BinaryIO
from urllib.parse import urlparse

OBJECT_SCHEMES = ("s3",)
_CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
                     "(and AWS_ENDPOINT_URL for a server other than AWS)")


_REFUSED = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken")


class ObjectStoreError(OSError):
    """An object-store request failed; the message names the bucket (and key) and the reason."""


def is_object_url(location: str | os.PathLike) -> bool:
    return urlparse(str(location)).scheme in OBJECT_SCHEMES


def split_url(url: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    parsed = urlparse(url)
    if parsed.scheme not in OBJECT_SCHEMES or not parsed.netloc:
        raise ObjectStoreError(f"{url!r}: not an object-store URL (s3://bucket/prefix)")
    return parsed.netloc, parsed.path.lstrip("/")


def join_url(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


@functools.lru_cache(maxsize=4)
def _client_for(pid: int, env: tuple) -> Any:
    import boto3  # imported on first use: local and http sets never need it
    from botocore.config import Config

    return boto3.session.Session().client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))


def client() -> Any:
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    return _client_for(os.getpid(), env)


def _explain(exc: Exception, url: str) -> ObjectStoreError:
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    bucket = urlparse(url).netloc
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return ObjectStoreError(f"bucket {bucket!r} ({url}): no credentials found: {_CREDENTIALS_HINT}")
    code = exc.response.get("Error", {}).get("Code", "?") if isinstance(exc, ClientError) else None
    # boto3's upload_file wraps the ClientError into a message: find the code in it.
    code = code or next((c for c in _REFUSED + ("NoSuchBucket",) if c in str(exc)), None)
    if code:
        if code in _REFUSED:
            return ObjectStoreError(f"bucket {bucket!r} ({url}): access refused ({code}): the credentials are "
                                    f"wrong or lack permission: {_CREDENTIALS_HINT}")
        if code == "NoSuchBucket" or (code == "404" and getattr(exc, "operation_name", "") == "HeadBucket"):
            return ObjectStoreError(f"bucket {bucket!r} ({url}): no such bucket")
        return ObjectStoreError(f"bucket {bucket!r} ({url}): {code}: {exc}")
    return ObjectStoreError(f"bucket {bucket!r} ({url}): {type(exc).__name__}: {exc}")


def _errors() -> tuple[type[Exception], ...]:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return BotoCoreError, ClientError, Boto3Error


def _call(url: str, method: str, **kwargs) -> Any:
    try:
        return getattr(client(), method)(**kwargs)
    except _errors() as exc:
        raise _explain(exc, url) from None


def object_size(url: str) -> int | None:
    """The object's size in bytes, or None when there is no such key (the bucket must exist)."""
    from botocore.exceptions import ClientError

    bucket, key = split_url(url)
    try:
        return int(client().head_object(Bucket=bucket, Key=key)["ContentLength"])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            _call(url, "head_bucket", Bucket=bucket)  # a missing bucket is an error, not a missing key
            return None
        raise _explain(exc, url) from None
    except _errors() as exc:  # credential errors are BotoCoreErrors, not ClientErrors
        raise _explain(exc, url) from None


def open_object(url: str) -> BinaryIO:
    """A readable stream of the whole object."""
    bucket, key = split_url(url)
    return _call(url, "get_object", Bucket=bucket, Key=key)["Body"]


def read_object(url: str) -> bytes | None:
    """The object's bytes, or None when there is no such key."""
    if object_size(url) is None:
        return None
    with open_object(url) as body:
        return body.read()


def put_bytes(url: str, data: bytes) -> None:
    """One PUT: readers see the whole object or none of it."""
    bucket, key = split_url(url)
    _call(url, "put_object", Bucket=bucket, Key=key, Body=data)


def put_file(url: str, path: str | os.PathLike) -> None:
    """Upload a local file (multipart above boto3's threshold); the object appears only when complete."""
    bucket, key = split_url(url)
    _call(url, "upload_file", Filename=str(path), Bucket=bucket, Key=key)
