"""Sources and the per-shard writer, without Ray: what a worker does, called directly."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torchvision
import webdataset as wds
from PIL import Image

from manifests import inspect_shard
from pipeline.records import RecordSettings, process_record
from pipeline.shards import load_done, plan_shards, write_shard
from pipeline.sources import SourceError, demo_source, image_folder_source, open_source
from pipeline.store import LocalStore
from tests.badinputs import awkward_files, bad_files, jpeg_bytes, write_files


def _settings(source, **kw) -> RecordSettings:
    return RecordSettings(key_prefix=source.kind, class_names=tuple(source.classes), **kw)


def _read_plain(path: Path) -> list[dict]:
    """Read a shard with plain webdataset: no project code, no default decoders."""
    return list(wds.WebDataset(str(path), shardshuffle=False))


def test_imagefolder_order_matches_torchvision(tmp_path):
    for cls in ("zebra", "Apple", "mango"):
        for i in (3, 1, 2):
            (tmp_path / cls).mkdir(exist_ok=True)
            (tmp_path / cls / f"{i}.jpg").write_bytes(jpeg_bytes())
    ours = image_folder_source(tmp_path)
    theirs = torchvision.datasets.ImageFolder(str(tmp_path))
    assert ours.classes == theirs.classes
    assert [(os.fsdecode(r.path), r.label) for r in ours.records] == theirs.samples


def test_non_utf8_file_name_is_written_and_noted(tmp_path):
    cls_dir = os.path.join(os.fsencode(tmp_path), b"cls")
    os.makedirs(cls_dir)
    with open(os.path.join(cls_dir, b"caf\xe9.jpg"), "wb") as f:
        f.write(jpeg_bytes())
    source = image_folder_source(tmp_path)
    (record,) = source.records
    assert record.source_id == "cls/caf\\xe9.jpg"
    result = process_record(record, _settings(source))
    meta = json.loads(result.sample["json"])
    assert meta["source_id"] == "cls/caf\\xe9.jpg"
    assert any("not valid UTF-8" in note for note in meta["decode_notes"])


def test_bad_source_specs_are_refused(tmp_path):
    for spec, message in [("folder:x", "expected imagefolder:DIR"),
                          ("imagefolder:" + str(tmp_path / "nope"), "not a directory"),
                          ("coco:only_one_part", "expected coco:ANNOTATIONS_JSON:IMAGES_DIR"),
                          ("demo:abc", "expected demo[:COUNT[:SIZE]]")]:
        with pytest.raises(SourceError, match=message.replace("[", r"\[").replace("]", r"\]")):
            open_source(spec)


def test_demo_is_deterministic_and_labelled():
    a, b = demo_source(8, 64), demo_source(8, 64)
    for ra, rb in zip(a.records, b.records, strict=True):
        assert ra.read() == rb.read()
    data, extra = a.records[0].read()
    assert Image.open(io.BytesIO(data)).size == (64, 64)
    assert extra["label"] == extra["box_labels"][0] and len(extra["boxes"]) >= 1


def test_shard_round_trip_with_bad_inputs(tmp_path):
    src = tmp_path / "src"
    write_files(src / "good", {**awkward_files(), "ok.jpg": jpeg_bytes(), "notes.txt": b"hi"})
    write_files(src / "bad", bad_files())
    source = image_folder_source(src)
    out = tmp_path / "out"
    out.mkdir()
    (plan,) = plan_shards(len(source.records), 100)
    done = write_shard(plan, source.records, _settings(source), str(out), "fp")

    samples = _read_plain(out / plan.name)
    reasons = {s["source_id"]: s["reason"] for s in done["skipped"]}
    assert len(samples) + len(reasons) == len(source.records)  # inputs = written + skipped
    assert set(reasons) == {f"bad/{n}" for n in bad_files()} | {"good/notes.txt"}
    assert "empty file" in reasons["bad/empty.jpg"] and "HTML" in reasons["bad/page.jpg"]
    assert done["conversions"]["CMYK converted to RGB (naive, ICC profile ignored)"] == 1
    for sample in samples:
        meta = json.loads(sample["json"])
        image_field = "jpg" if "jpg" in sample else "png"
        image = Image.open(io.BytesIO(sample[image_field]))
        assert image.mode == "RGB" and image.size == (meta["width"], meta["height"])
        assert int(sample["cls"]) == meta["label"] == source.classes.index("good")
    assert inspect_shard(out / plan.name)["samples"] == done["samples"] == len(samples)
    assert load_done(LocalStore(out), plan, "fp") == done and load_done(LocalStore(out), plan, "other") is None


def test_max_side_scales_boxes_and_image(tmp_path):
    source = demo_source(4, 96)
    settings = _settings(source, max_side=48)
    for record in source.records:
        _, extra = record.read()
        meta = json.loads(process_record(record, settings).sample["json"])
        assert (meta["width"], meta["height"]) == (48, 48) and meta["stored"] == "re-encoded png"
        assert meta["boxes"] == [[v / 2 for v in b] for b in extra["boxes"]]


def test_a_killed_writer_leaves_no_final_name_and_temporaries_are_removed(tmp_path):
    source = demo_source(4, 64)
    (plan,) = plan_shards(4, 4)

    class Boom(Exception):
        pass

    def exploding_repaint(image, key, meta):  # a crash that is not a per-record error
        raise Boom

    settings = _settings(source)
    with pytest.raises(Boom):
        write_shard(plan, source.records, settings, str(tmp_path), "fp", repaint=exploding_repaint)
    assert not (tmp_path / plan.name).exists() and not list(tmp_path.glob(".*"))
    (tmp_path / f".{plan.name}.123.abcd.partial").write_bytes(b"half a shard")
    assert LocalStore(tmp_path).remove_stale() == 1 and not list(tmp_path.glob(".*partial"))
