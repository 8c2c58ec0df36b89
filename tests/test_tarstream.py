"""The training loop's tar reader yields what tarfile yields, for USTAR, PAX and GNU archives."""

from __future__ import annotations

import io
import tarfile

import pytest

from train.tarstream import TarFormatError, iter_members

LONG = "deep/" * 30 + "sample-000001.a-very-long-field-name.json"  # > 100 bytes: needs PAX/GNU headers


def _archive(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        folder = tarfile.TarInfo("dir")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for i, (name, size) in enumerate([("a.jpg", 0), ("a.cls", 1), ("b.jpg", 512), ("b.json", 513),
                                           (LONG, 700), ("ünï/cödé.txt", 3)]):
            if fmt == tarfile.USTAR_FORMAT and (name == LONG or not name.isascii()):
                continue
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes([i]) * size))
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "a.jpg"
        tar.addfile(link)
    return buf.getvalue()


def _with_tarfile(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_same_members_as_tarfile(fmt):
    data = _archive(fmt)
    expected = _with_tarfile(data)
    assert list(iter_members(io.BytesIO(data), "mem")) == expected
    assert len(expected) >= 4


def test_truncation_inside_a_member_and_bad_checksums_are_errors():
    data = _archive(tarfile.PAX_FORMAT)
    with pytest.raises(TarFormatError, match="member data truncated|truncated header"):
        list(iter_members(io.BytesIO(data[:2800]), "shard.tar"))  # inside b.jpg's data
    corrupt = bytearray(data)
    corrupt[1024 + 10] ^= 0xFF  # inside the second header's name
    with pytest.raises(TarFormatError, match="shard.tar at byte 1024: header checksum mismatch"):
        list(iter_members(io.BytesIO(bytes(corrupt)), "shard.tar"))


def test_cut_at_a_header_boundary_reads_short_like_tarfile():
    data = _archive(tarfile.USTAR_FORMAT)
    cut = data[:512 * 3]  # dir header, a.jpg header (0 bytes), a.cls header; a.cls data missing
    with pytest.raises(TarFormatError):
        list(iter_members(io.BytesIO(cut), "x"))
    boundary = data[:512 * 2]
    assert list(iter_members(io.BytesIO(boundary), "x")) == [("a.jpg", b"")]


def _pax_member(records: bytes) -> bytes:
    """A tar whose first member is a PAX header holding `records` verbatim, then one file."""
    pax = tarfile.TarInfo("pax")
    pax.type, pax.size = tarfile.XHDTYPE, len(records)
    header = pax.tobuf(tarfile.USTAR_FORMAT)
    body = records + bytes(-len(records) % 512)
    info = tarfile.TarInfo("a.jpg")
    info.size = 3
    return header + body + info.tobuf(tarfile.USTAR_FORMAT) + b"abc" + bytes(509) + bytes(1024)


@pytest.mark.parametrize("records", [b"0 path=x\n", b"5 path=x\n", b"abc path=x\n", b"99 path=x\n", b"nospace"])
def test_a_malformed_pax_record_is_an_error_not_a_hang(records):
    with pytest.raises(TarFormatError, match="shard.tar at byte 0: malformed PAX record"):
        list(iter_members(io.BytesIO(_pax_member(records)), "shard.tar"))


def test_a_well_formed_pax_record_sets_the_name():
    assert list(iter_members(io.BytesIO(_pax_member(b"14 path=b.png\n")), "x")) == [("b.png", b"abc")]


def test_the_stage_hands_a_bad_tar_to_its_handler_and_goes_on():
    from train.tarstream import tar_file_expander

    seen = []
    good, bad = _archive(tarfile.GNU_FORMAT), _pax_member(b"0 path=x\n")
    sources = [{"url": "bad.tar", "stream": io.BytesIO(bad)}, {"url": "good.tar", "stream": io.BytesIO(good)}]
    records = list(tar_file_expander(sources, handler=lambda exc: seen.append(str(exc)) or True))
    assert [r["fname"] for r in records] == [name for name, _ in _with_tarfile(good)]
    assert {r["__url__"] for r in records} == {"good.tar"} and "malformed PAX record" in seen[0]


@pytest.mark.timeout(60)
def test_random_truncations_and_byte_flips_never_hang_and_raise_only_the_readers_error():
    import random

    rng = random.Random(0)
    for fmt in (tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        data = _archive(fmt)
        for trial in range(1500):
            mutated = bytearray(data[: rng.randrange(len(data) + 1)] if trial % 2 else data)
            reach = len(mutated) if trial % 3 else min(len(mutated), 2048)  # a third aim at the first headers
            for _ in range(rng.randrange(1, 6)):
                if reach:
                    mutated[rng.randrange(reach)] = rng.randrange(256)
            try:
                members = list(iter_members(io.BytesIO(bytes(mutated)), "fuzz"))
            except TarFormatError:
                continue
            assert all(isinstance(n, str) and isinstance(d, bytes) for n, d in members)
