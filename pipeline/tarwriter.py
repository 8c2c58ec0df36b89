"""A deterministic USTAR writer for shards: the bytes `tarfile` writes, several times faster.

Why not `webdataset.TarWriter`: it goes through `tarfile.addfile`, which builds a TarInfo and its
header member by member. bench/bench_tarwriter.py times both on the job's own samples against the
job's per-record work (read, safe decode, metadata; 2-core x86_64): at 32 px (CIFAR-10, 184 us a
record) webdataset's writer costs 117 us a sample (63 % of it) against 25 us (13 %) for this one;
at 640 px (COCO128, 3.0 ms a record) 275 us (9 %) against 158 us (5 %). By the project's rule
(keep a hand-written part only where the library costs > ~10 % of the job) it stays for small
images, which are this project's common case. Every member
of a shard has the same owner, mode and mtime, so a header is a fixed template with the name, size
and checksum filled in. tests/test_tarwriter.py checks that the output is byte-identical to
`tarfile` (USTAR) and to `webdataset.TarWriter` with the same metadata, and that webdataset reads
it back. The sha256 is computed while writing.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO

BLOCK = 512
RECORD = 20 * BLOCK  # tarfile pads the archive to a whole record


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


class ShardTarWriter:
    """Write samples ({"__key__": str, field: bytes, ...}) with fields in sorted order."""

    def __init__(self, fileobj: BinaryIO, owner: str = "repaint", mtime: int = 0, mode: int = 0o444):
        self.fileobj = fileobj
        self.sha256 = hashlib.sha256()
        self.size = 0
        template = bytearray(BLOCK)
        template[100:108] = _octal(mode, 8)
        template[108:116] = _octal(0, 8)  # uid
        template[116:124] = _octal(0, 8)  # gid
        template[136:148] = _octal(mtime, 12)
        template[148:156] = b" " * 8  # checksum is computed with this field as spaces
        template[156:157] = b"0"  # regular file
        template[257:265] = b"ustar\x0000"
        owner_b = owner.encode("ascii")
        template[265:265 + len(owner_b)] = owner_b  # uname
        template[297:297 + len(owner_b)] = owner_b  # gname; devmajor/minor stay empty, as tarfile
        self._template = bytes(template)

    def _write(self, data: bytes) -> None:
        self.fileobj.write(data)
        self.sha256.update(data)
        self.size += len(data)

    def _header(self, name: str, size: int) -> bytes:
        name_b = name.encode("utf-8")
        if len(name_b) > 100:
            raise ValueError(f"tar member name {name!r} is longer than USTAR's 100 bytes")
        header = bytearray(self._template)
        header[0:len(name_b)] = name_b
        header[124:136] = _octal(size, 12)
        header[148:156] = b"%06o\0 " % sum(header)
        return bytes(header)

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        for field in sorted(k for k in sample if not k.startswith("_")):
            data = sample[field]
            self._write(self._header(f"{key}.{field}", len(data)))
            self._write(data)
            if len(data) % BLOCK:
                self._write(b"\0" * (BLOCK - len(data) % BLOCK))

    def close(self) -> None:
        self._write(b"\0" * (2 * BLOCK))  # end-of-archive marker
        if self.size % RECORD:
            self._write(b"\0" * (RECORD - self.size % RECORD))

    def __enter__(self) -> ShardTarWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
