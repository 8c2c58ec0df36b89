"""The trainer's streaming: steps per rank, variant choice, bad shards, pickles, HTTP, resume skip."""

from __future__ import annotations

import functools
import http.server
import json
import os
import pickle
import tarfile
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from manifests import ManifestError
from pipeline.tarwriter import ShardTarWriter
from tests.shardsets import make_shard_set, manifest_of
from train.classification import ClassificationDecoder
from train.stream import EvalStream, TrainStream, choose_field, open_shard_set

torch.set_num_threads(2)


def _to_tensor(image):
    return torch.from_numpy(__import__("numpy").asarray(image.resize((8, 8)), dtype="float32")).permute(2, 0, 1)


_decode = ClassificationDecoder(_to_tensor)


def _train_stream(shard_set, rank=0, world=1, batch=4, steps=None, **kw):
    steps = steps if steps is not None else shard_set.samples // (world * batch)
    defaults = dict(seed=0, orig_prob=0.5, use_variants=True, max_bad=10)
    return TrainStream(shard_set, _decode, batch, steps, rank, world, **{**defaults, **kw})


def _batches(stream, workers: int) -> list:
    return list(DataLoader(stream, batch_size=stream.batch_size, num_workers=workers))


@pytest.mark.timeout(120)
def test_equal_steps_per_rank_with_uneven_shards_and_fewer_shards_than_workers(tmp_path):
    shard_set = open_shard_set(make_shard_set(tmp_path, 45, per_shard=20))  # shards of 20, 20, 5
    steps = shard_set.samples // (2 * 4)
    for rank in (0, 1):  # 2 ranks x 2 workers = 4 readers over 3 shards: resampled, never empty
        batches = _batches(_train_stream(shard_set, rank=rank, world=2, steps=steps), workers=2)
        assert len(batches) == steps == 5 and all(b[0].shape[0] == 4 for b in batches)


def test_variant_choice_is_deterministic_and_follows_orig_prob(tmp_path):
    make_shard_set(tmp_path, 40, per_shard=40, variants=2)
    sample = {"__key__": "demo-00000001", "jpg": b"", "rp0.jpg": b"", "rp1.jpg": b""}
    picks = [choose_field(dict(sample, __key__=f"k{i}"), 0, 0, 0.3, True) for i in range(2000)]
    counts = Counter(picks)
    assert 0.25 < counts["jpg"] / 2000 < 0.35 and counts["rp0.jpg"] > 500 and counts["rp1.jpg"] > 500
    assert choose_field(sample, 0, 3, 0.3, True) == choose_field(sample, 0, 3, 0.3, True)
    assert {choose_field(sample, 0, e, 0.3, True) for e in range(50)} == {"jpg", "rp0.jpg", "rp1.jpg"}
    assert choose_field(sample, 0, 0, 0.0, use_variants=False) == "jpg"


def test_resume_skips_batches_without_changing_the_rest(tmp_path):
    shard_set = open_shard_set(make_shard_set(tmp_path, 64, per_shard=16, variants=2))
    full = _batches(_train_stream(shard_set), workers=2)
    resumed_stream = _train_stream(shard_set)
    resumed_stream.set_epoch(0, start_step=5)
    resumed = _batches(resumed_stream, workers=2)
    assert len(full) == 16 and len(resumed) == 11
    for a, b in zip(full[5:], resumed, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _truncate_at_member(path: Path, member_index: int) -> None:
    with tarfile.open(path) as tar:
        offset = tar.getmembers()[member_index].offset
    path.write_bytes(path.read_bytes()[:offset])


def test_truncated_and_corrupt_shards_are_counted_not_silent(tmp_path, caplog):
    root = make_shard_set(tmp_path, 30, per_shard=10)
    _truncate_at_member(root / "shard-000000.tar", 3 * 4)  # 4 of 10 samples survive, no tar error
    with tarfile.open(root / "shard-000001.tar") as tar:  # garble the first sample's image bytes
        image = next(m for m in tar.getmembers() if m.name.endswith(".png"))
    data = bytearray((root / "shard-000001.tar").read_bytes())
    data[image.offset_data:image.offset_data + image.size] = b"\x00" * image.size
    (root / "shard-000001.tar").write_bytes(bytes(data))
    samples = list(EvalStream(open_shard_set(root), _decode, rank=0, world=1, max_bad=10))
    bad = sum(s[2] for s in samples)
    assert len(samples) + bad == 30 and bad == 7
    assert "short shard: manifest says 10 samples, read 4" in caplog.text
    assert "shard-000001.tar demo-000000" in caplog.text and "not a recognised image" in caplog.text
    with pytest.raises(RuntimeError, match="more than 0 bad samples or shards"):
        list(EvalStream(open_shard_set(root), _decode, rank=0, world=1, max_bad=0))


class _Boobytrap:
    def __reduce__(self):
        return (open, ("/tmp/sage-test-unpickled-marker", "w"))


def test_pickle_members_are_never_unpickled(tmp_path, caplog):
    root = make_shard_set(tmp_path, 4, per_shard=4)
    shard = root / "shard-000000.tar"
    samples = list(__import__("webdataset").WebDataset(str(shard), shardshuffle=False))
    marker = Path("/tmp/sage-test-unpickled-marker")
    marker.unlink(missing_ok=True)
    with open(shard, "wb") as f, ShardTarWriter(f) as writer:
        for i, s in enumerate(samples):
            fields = {k: v for k, v in s.items() if not k.startswith("__")}
            if i == 0:
                fields["pyd"] = pickle.dumps(_Boobytrap())
            if i == 1:
                fields["pth"] = pickle.dumps(_Boobytrap())
            writer.write({"__key__": s["__key__"], **fields})
    out = list(EvalStream(open_shard_set(root), _decode, rank=0, world=1, max_bad=5))
    assert len(out) == 2 and sum(o[2] for o in out) == 2
    assert "'pyd' is a pickle format and is refused" in caplog.text
    assert "'pth' is a pickle format and is refused" in caplog.text
    assert not marker.exists()


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "bucket"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_shard_set_streams_the_same_samples_as_disk(http_server):
    root, url = http_server
    make_shard_set(root / "set", 24, per_shard=10)
    local = list(EvalStream(open_shard_set(str(root / "set")), _decode, 0, 1, max_bad=0))
    remote_set = open_shard_set(f"{url}/set")
    assert all(s.url.startswith(url) for s in remote_set.shards)
    remote = list(EvalStream(remote_set, _decode, 0, 1, max_bad=0))
    assert len(local) == len(remote) == 24
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(local, remote, strict=True))


@pytest.mark.parametrize("name", ["pipe:curl -s http://example.com/x.tar", "ftp://host/x.tar"])
def test_manifest_naming_a_forbidden_url_is_refused_before_opening(tmp_path, name):
    root = make_shard_set(tmp_path, 4, per_shard=4)
    manifest = manifest_of(root)
    manifest["shards"][0]["name"] = name
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="is not in the allowlist|run shell commands"):
        open_shard_set(str(root))
    with pytest.raises(Exception, match="pipe:|allowlist"):
        open_shard_set("pipe:cat " + str(root / "manifest.json"))



@pytest.mark.timeout(60)
def test_a_fifo_in_place_of_a_shard_is_a_counted_bad_shard_not_a_hang(tmp_path):
    root = make_shard_set(tmp_path, 8, per_shard=4)
    (root / "shard-000001.tar").unlink()
    os.mkfifo(root / "shard-000001.tar")
    samples = list(EvalStream(open_shard_set(root), _decode, rank=0, world=1, max_bad=10))
    assert len(samples) == 4 and sum(s[2] for s in samples) == 4  # the FIFO's 4 samples counted as bad


@pytest.mark.parametrize("name", ["../elsewhere/shard-000000.tar", "/tmp/shard-000000.tar",
                                  "http://other-host/shard-000000.tar"])
def test_a_manifest_naming_a_shard_outside_its_set_is_refused(tmp_path, name):
    root = make_shard_set(tmp_path, 4, per_shard=4)
    manifest = manifest_of(root)
    manifest["shards"][0]["name"] = name
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a relative path inside|outside the shard set's own base"):
        open_shard_set(str(root))


def test_a_class_index_outside_the_set_is_a_bad_sample_naming_shard_and_key(tmp_path):
    root = make_shard_set(tmp_path, 12, per_shard=12)
    decode = ClassificationDecoder(_to_tensor, num_classes=1)  # every class index above 0 is out of range
    with pytest.raises(RuntimeError, match=r"shard-000000\.tar.*demo-\d+.*cls \d is outside the set's 1 classes"):
        list(EvalStream(open_shard_set(root), decode, rank=0, world=1, max_bad=0))
    for raw, message in ((b"-1", "cls -1 is negative"), (b"ten", "cls b'ten' is not a class index")):
        with pytest.raises(ValueError, match=message):
            ClassificationDecoder(_to_tensor, num_classes=10)({"cls": raw, "png": b""}, "png", None)
