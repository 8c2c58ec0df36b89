"""The shard contract shared by the producer (`pipeline`) and the consumer (`train`).

Importing this package never imports ray, torch, `pipeline` or `train`.
"""

from .contract import (
    ALLOWED_EXTENSIONS,
    FIELD_CLS,
    FIELD_JSON,
    FORMAT_VERSION,
    MANIFEST_NAME,
    ContractError,
    check_field,
    check_key,
    check_shard_url,
    make_key,
    shard_name,
    variant_field,
)
from .imageio import DecodedImage, ImageDecodeError, decode_image, encode_image
from .manifest import (
    ManifestError,
    ShardProblem,
    inspect_shard,
    load_manifest,
    read_manifest,
    resolve_shard,
    shard_urls,
    verify_shard_set,
    write_manifest,
)

__all__ = [
    "ALLOWED_EXTENSIONS", "FIELD_CLS", "FIELD_JSON", "FORMAT_VERSION", "MANIFEST_NAME",
    "ContractError", "DecodedImage", "ImageDecodeError", "ManifestError", "ShardProblem",
    "check_field", "check_key", "check_shard_url", "decode_image", "encode_image", "inspect_shard",
    "load_manifest", "make_key", "read_manifest", "resolve_shard", "shard_name", "shard_urls", "variant_field",
    "verify_shard_set", "write_manifest",
]
