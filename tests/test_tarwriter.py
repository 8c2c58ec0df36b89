"""The shard tar writer writes exactly what tarfile (USTAR) writes, and webdataset reads it."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest
import webdataset as wds

from pipeline.tarwriter import ShardTarWriter

SAMPLES = [
    {"__key__": f"demo-{i:08d}", "png": bytes(range(256)) * (i + 1), "cls": str(i).encode(),
     "json": b'{"a": 1}' * (3 * i), "rp0.jpg": b"\xff\xd8" + b"x" * (511 + i)}
    for i in range(7)
]


def _with_tarfile() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for sample in SAMPLES:
            for field in sorted(k for k in sample if k != "__key__"):
                info = tarfile.TarInfo(f"{sample['__key__']}.{field}")
                info.size, info.mtime, info.mode = len(sample[field]), 0, 0o444
                info.uname = info.gname = "repaint"
                tar.addfile(info, io.BytesIO(sample[field]))
    return buf.getvalue()


def _with_ours() -> tuple[bytes, ShardTarWriter]:
    buf = io.BytesIO()
    with ShardTarWriter(buf) as writer:
        for sample in SAMPLES:
            writer.write(sample)
    return buf.getvalue(), writer


def test_bytes_match_tarfile_ustar():
    ours, writer = _with_ours()
    assert ours == _with_tarfile()
    assert writer.size == len(ours) and writer.sha256.hexdigest() == hashlib.sha256(ours).hexdigest()


def test_webdataset_reads_it_back(tmp_path):
    path = tmp_path / "s.tar"
    path.write_bytes(_with_ours()[0])
    read = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [s["__key__"] for s in read] == [s["__key__"] for s in SAMPLES]
    for got, want in zip(read, SAMPLES, strict=True):
        assert all(got[k] == want[k] for k in want if k != "__key__")


def test_overlong_names_are_refused():
    with pytest.raises(ValueError, match="longer than USTAR's 100 bytes"):
        ShardTarWriter(io.BytesIO()).write({"__key__": "k" * 100, "json": b"{}"})


def test_bytes_match_webdatasets_own_tarwriter():
    """The library it replaces (bench/bench_tarwriter.py measures why) writes the same bytes."""
    buf = io.BytesIO()
    writer = wds.TarWriter(buf, user="repaint", group="repaint", mode=0o444, mtime=0, encoder=False)
    writer.tarstream.format = tarfile.USTAR_FORMAT
    for sample in SAMPLES:
        writer.write(sample)
    writer.close()
    assert _with_ours()[0] == buf.getvalue()
