"""The repainter's training set and shard-time helpers, without Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.preview import colourise
from pipeline.records import RecordSettings
from pipeline.repaint.data import build_repaint_set, task_target, to_model_inputs
from pipeline.repaint.paint import is_repainted
from pipeline.segment import make_segmenter
from pipeline.sources import open_source
from tests.badinputs import jpeg_bytes, write_files


def test_bad_images_are_skipped_with_their_reason_not_trained_on(tmp_path):
    write_files(tmp_path / "a", {"good.jpg": jpeg_bytes(), "truncated.jpg": jpeg_bytes()[:40]})
    write_files(tmp_path / "b", {"good.jpg": jpeg_bytes()})
    source = open_source(f"imagefolder:{tmp_path}")
    settings = RecordSettings(key_prefix=source.kind, class_names=tuple(source.classes))
    data = build_repaint_set(source.records, settings, make_segmenter("fh"), 32, 2, multilabel=False)
    assert len(data) == 2 and data.images.shape == (2, 32, 32, 3) and data.labels.shape == (2, 32, 32)
    assert sorted(data.targets.tolist()) == [0, 1]
    assert [s["source_id"] for s in data.skipped] == ["a/truncated.jpg"]
    assert data.skipped[0]["reason"].startswith("truncated or corrupt image")


def test_coco_targets_are_the_categories_present():
    target = task_target({"source_id": "x", "box_labels": [2, 0, 2]}, 4, multilabel=True)
    assert target.tolist() == [1.0, 0.0, 1.0, 0.0]


def test_model_inputs_are_scaled_images_and_one_hot_channels_plus_boundary():
    images = np.full((2, 16, 16, 3), 255, np.uint8)
    labels = np.zeros((2, 16, 16), np.uint16)
    labels[:, :, 8:] = 20  # beyond the one-hot channels: folded into "other"
    x, channels = to_model_inputs(images, labels, 5)
    assert x.shape == (2, 3, 16, 16) and torch.allclose(x, torch.ones_like(x))
    assert channels.shape == (2, 5, 16, 16)
    assert torch.equal(channels[:, :4].sum(1), torch.ones(2, 16, 16))  # exactly one segment channel each
    assert channels[0, 3, 0, 15] == 1 and channels[0, 4].sum() > 0  # "other" and the boundary


def test_repaint_fraction_picks_a_seeded_subset():
    keys = [f"k-{i:08d}" for i in range(2000)]
    picked = [k for k in keys if is_repainted(0, k, 0.25)]
    assert 400 < len(picked) < 600
    assert picked == [k for k in keys if is_repainted(0, k, 0.25)]  # the same every time
    assert all(is_repainted(0, k, 1.0) for k in keys)


def test_colourise_gives_each_id_one_colour():
    labels = np.array([[0, 1], [1, 300]], np.uint16)
    rgb = np.asarray(colourise(labels))
    assert (rgb[0, 1] == rgb[1, 0]).all() and not (rgb[0, 0] == rgb[0, 1]).all()


def test_edges_structure_draws_the_originals_edges_inside_a_segment():
    images = np.zeros((1, 16, 16, 3), np.uint8)
    images[0, :, 4:6] = 200  # a bright bar inside the one segment: no segment boundary there
    labels = np.zeros((1, 16, 16), np.uint16)
    _, plain = to_model_inputs(images, labels, 5)
    _, edged = to_model_inputs(images, labels, 5, structure="edges")
    assert plain[0, -1].sum() == 0  # one segment: no boundaries at all
    assert edged[0, -1, :, 3:7].max() == 1.0 and edged[0, -1, :, 10:].max() == 0.0  # the bar's edges only
    assert torch.equal(plain[:, :-1], edged[:, :-1])  # the segment channels are the same
    dark = (images // 4).astype(np.uint8)  # the same picture at a quarter of the contrast draws the same edges
    assert torch.allclose(to_model_inputs(dark, labels, 5, structure="edges")[1], edged, atol=1e-6)
    with pytest.raises(ValueError, match="structure 'lines'"):
        to_model_inputs(images, labels, 5, structure="lines")
