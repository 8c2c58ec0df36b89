"""Untrusted inputs: nothing outside the given roots is read, nothing hangs, --out is checked."""

from __future__ import annotations

import json
import os

import pytest

from pipeline.job_config import GenerateConfig
from pipeline.records import RecordSettings, process_record
from pipeline.sources import NotARegularFile, SourceError, coco_source, image_folder_source, read_regular_file
from tests.badinputs import jpeg_bytes


def _folder(tmp_path):
    root = tmp_path / "root"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.jpg").write_bytes(jpeg_bytes())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(jpeg_bytes())
    return root, outside


def _skips(source) -> dict[str, str | None]:
    return {r.source_id: r.skip_reason for r in source.records}


@pytest.mark.timeout(30)
def test_links_out_of_the_folder_and_fifos_are_listed_as_skips_never_read(tmp_path):
    root, outside = _folder(tmp_path)
    (root / "cat" / "link.jpg").symlink_to(outside / "secret.jpg")
    (root / "cat" / "linked_dir").symlink_to(outside)
    (root / "cat" / "broken.jpg").symlink_to(root / "cat" / "gone.jpg")
    os.mkfifo(root / "cat" / "pipe.jpg")
    source = image_folder_source(root)
    assert _skips(source) == {
        "cat/a.jpg": None,
        "cat/broken.jpg": "a broken link",
        "cat/link.jpg": "a link to outside the source folder (not followed)",
        "cat/linked_dir": "a link to outside the source folder (not followed)",
        "cat/pipe.jpg": "not a regular file (a FIFO, socket or device)",
    }
    settings = RecordSettings(key_prefix="t", class_names=("cat",))
    results = [process_record(r, settings) for r in source.records]  # would block on the FIFO if opened
    assert sum(r.sample is not None for r in results) == 1
    assert all(r.skip["reason"] for r in results if r.sample is None)  # counted, with the reason


@pytest.mark.timeout(30)
def test_a_fifo_is_refused_at_read_time_too(tmp_path):
    os.mkfifo(tmp_path / "x.jpg")
    with pytest.raises(NotARegularFile, match="x.jpg: not a regular file"):
        read_regular_file(os.fsencode(tmp_path / "x.jpg"))


@pytest.mark.timeout(30)
def test_links_that_loop_list_each_image_once(tmp_path):
    root, _ = _folder(tmp_path)
    (root / "cat" / "again").symlink_to(root / "cat")
    (root / "cat" / "sub").mkdir()
    (root / "cat" / "sub" / "up").symlink_to(root / "cat")
    (root / "cat" / "sub" / "b.jpg").write_bytes(jpeg_bytes())
    assert sorted(_skips(image_folder_source(root))) == ["cat/a.jpg", "cat/sub/b.jpg"]


def test_a_class_folder_linking_outside_is_refused(tmp_path):
    root, outside = _folder(tmp_path)
    (root / "dog").symlink_to(outside)
    with pytest.raises(SourceError, match="class folder 'dog' is a link to outside the source folder"):
        image_folder_source(root)


@pytest.mark.parametrize("file_name", ["../outside/secret.jpg", "ABSOLUTE"])
def test_coco_file_names_outside_the_images_folder_are_skipped_unread(tmp_path, file_name):
    root, outside = _folder(tmp_path)
    file_name = str(outside / "secret.jpg") if file_name == "ABSOLUTE" else file_name
    annotations = tmp_path / "ann.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": file_name, "width": 24, "height": 16},
                   {"id": 2, "file_name": "cat/a.jpg", "width": 24, "height": 16}],
        "annotations": [], "categories": [{"id": 1, "name": "thing"}]}))
    skips = _skips(coco_source(annotations, root))
    assert skips["cat/a.jpg"] is None
    assert skips[file_name] == f"file_name {file_name!r} resolves outside the images folder (not read)"


def test_out_that_is_a_file_below_a_file_or_inside_the_source_is_refused_before_any_work(tmp_path):
    root, _ = _folder(tmp_path)
    afile = tmp_path / "f"
    afile.write_text("x")
    cases = {str(afile): "is a file, not a folder", str(afile / "sub"): f"is below {afile}, which is a file",
             str(root): "is inside the source folder", str(root / "cat" / "out"): "is inside the source folder"}
    for out, message in cases.items():
        with pytest.raises(ValueError, match=message):
            GenerateConfig(source=f"imagefolder:{root}", out=out, variants=0)
    with pytest.raises(ValueError, match="is inside the source folder"):
        GenerateConfig(source=f"coco:{tmp_path / 'a.json'}:{root}", out=str(root / "shards"), variants=0)
    GenerateConfig(source=f"imagefolder:{root}", out=str(tmp_path / "shards"), variants=0)  # fine
