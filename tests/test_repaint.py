"""Shard-time repainting from a checkpoint: sizes, seeds, label maps, and the records hook."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from manifests.imageio import decode_label_map
from pipeline.records import RecordSettings, process_record
from pipeline.repaint.config import RepainterConfig
from pipeline.repaint.nets import build_encoder, build_generator
from pipeline.repaint.paint import Repaint, load_repainter, save_repainter
from pipeline.segment import FelzenszwalbSegmenter
from pipeline.shards import plan_shards, write_shard
from pipeline.sources import demo_source

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = RepainterConfig(label_channels=9, z_dim=4, encoder_width=8, ngf=8, spade_hidden=8, num_up=3, ndf=8)
    path = tmp_path_factory.mktemp("ckpt") / "repainter.pth"
    sha = save_repainter(path, cfg, build_encoder(cfg), build_generator(cfg), step=5)
    return path, sha


def _image() -> Image.Image:
    data, _ = demo_source(4, 72).records[1].read()
    return Image.open(io.BytesIO(data)).convert("RGB").resize((72, 56))  # not square, not a multiple of 8


def test_checkpoint_round_trip_with_weights_only(checkpoint):
    path, sha = checkpoint
    cfg, encoder, generator, info = load_repainter(path)
    assert cfg.label_channels == 9 and info["sha256"] == sha and info["step"] == 5
    assert not encoder.training and not generator.training


def test_variants_keep_the_stored_size_and_repeat_per_seed(checkpoint):
    image = _image()
    a = Repaint(checkpoint[0], FelzenszwalbSegmenter(), variants=3, seed=1, repaint_size=32)(image, "k-1", {})
    b = Repaint(checkpoint[0], FelzenszwalbSegmenter(), variants=3, seed=1, repaint_size=32)(image, "k-1", {})
    c = Repaint(checkpoint[0], FelzenszwalbSegmenter(), variants=3, seed=2, repaint_size=32)(image, "k-1", {})
    assert sorted(a) == ["rp0.jpg", "rp1.jpg", "rp2.jpg", "seg.png"] and a == b and a["rp0.jpg"] != c["rp0.jpg"]
    for v in range(3):
        assert Image.open(io.BytesIO(a[f"rp{v}.jpg"])).size == image.size
    assert len({a["rp0.jpg"], a["rp1.jpg"], a["rp2.jpg"]}) == 3
    labels = decode_label_map(a["seg.png"], "seg.png")
    assert np.array_equal(labels, FelzenszwalbSegmenter()(image))


def test_posterior_latent_is_a_separate_deterministic_mode(checkpoint):
    image = _image()
    make = lambda latent: Repaint(checkpoint[0], FelzenszwalbSegmenter(), variants=2, seed=1,  # noqa: E731
                                  repaint_size=32, latent=latent)(image, "k-1", {})
    posterior, prior = make("posterior"), make("prior")
    assert posterior == make("posterior") and posterior["rp0.jpg"] != prior["rp0.jpg"]
    assert posterior["seg.png"] == prior["seg.png"]
    with pytest.raises(ValueError, match="variant latent 'uniform': expected one of prior, bank, posterior"):
        make("uniform")
    with pytest.raises(ValueError, match="repainter.pth: this repainter has no style bank"):
        make("bank")  # a checkpoint saved without one: said, not painted from an empty bank


def test_style_bank_holds_the_codes_of_present_regions_and_survives_the_checkpoint(checkpoint, tmp_path):
    from pipeline.repaint.paint import collect_style_bank

    cfg, encoder, generator, _ = load_repainter(checkpoint[0])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.zeros((6, 32, 32), np.uint16)
    labels[:, :, 16:] = 1  # two regions per image (channels 0 and 1 of 8): 12 codes
    bank = collect_style_bank(encoder, images, labels, cfg.label_channels, batch_size=4)
    assert bank.shape == (12, cfg.z_dim)
    small = collect_style_bank(encoder, images, labels, cfg.label_channels, limit=5, seed=3)
    assert small.shape == (5, cfg.z_dim) and torch.equal(small, collect_style_bank(
        encoder, images, labels, cfg.label_channels, limit=5, seed=3))
    assert all(any(torch.equal(row, b) for b in bank) for row in small)  # a subset, not new codes
    encoder.style_bank = bank
    path = tmp_path / "banked.pt"
    save_repainter(path, cfg, encoder, generator, step=5)
    _, loaded, _, info = load_repainter(path)
    assert info["style_bank"] == 12 and torch.equal(loaded.style_bank, bank)
    assert load_repainter(checkpoint[0])[3]["style_bank"] == 0

    image = _image()
    make = lambda latent, seed=1: Repaint(path, FelzenszwalbSegmenter(), variants=2, seed=seed,  # noqa: E731
                                          repaint_size=32, latent=latent)(image, "k-1", {})
    banked = make("bank")
    assert banked == make("bank") and banked["rp0.jpg"] != make("bank", seed=2)["rp0.jpg"]
    assert banked["rp0.jpg"] != banked["rp1.jpg"] and banked["rp0.jpg"] != make("prior")["rp0.jpg"]


def test_records_hook_writes_variants_and_label_map(checkpoint):
    source = demo_source(2, 64)
    repaint = Repaint(checkpoint[0], FelzenszwalbSegmenter(), variants=2, seed=0, repaint_size=32)
    sample = process_record(source.records[0], RecordSettings("demo", tuple(source.classes)), repaint).sample
    meta = json.loads(sample["json"])
    assert {"png", "cls", "json", "rp0.jpg", "rp1.jpg", "seg.png"} == set(sample) - {"__key__"}
    assert meta["fields"] == ["cls", "json", "png", "rp0.jpg", "rp1.jpg", "seg.png"]


def test_bad_checkpoints_and_sizes_are_named(checkpoint, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.pth: not a loadable repainter checkpoint"):
        load_repainter(bad)
    torch.save({"format": "other"}, bad)
    with pytest.raises(ValueError, match="bad.pth: not a repainter-v2 checkpoint"):
        load_repainter(bad)
    torch.save({"format": "repainter-v2", "config": {"z_channels": 16}, "step": 0}, bad)
    with pytest.raises(ValueError, match=r"unknown keys \['z_channels'\]"):
        load_repainter(bad)
    with pytest.raises(FileNotFoundError, match="missing.pth: repainter checkpoint not found"):
        load_repainter(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="--repaint-size 30 must be a multiple of 8"):
        Repaint(checkpoint[0], FelzenszwalbSegmenter(), variants=1, seed=0, repaint_size=30)


def test_region_hues_rotate_per_region_and_keep_saturation_and_value():
    from skimage.color import rgb2hsv

    from pipeline.repaint.paint import rotate_hues

    rng = np.random.default_rng(0)
    pixels = rng.integers(40, 220, (8, 8, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 16).reshape(8, 8)  # four horizontal bands
    assert rotate_hues(pixels, labels, "none", 5) is pixels
    region, image = rotate_hues(pixels, labels, "region", 5), rotate_hues(pixels, labels, "image", 5)
    assert np.array_equal(region, rotate_hues(pixels, labels, "region", 5))
    assert not np.array_equal(region, rotate_hues(pixels, labels, "region", 6))
    before, after = rgb2hsv(pixels), rgb2hsv(region)
    assert np.abs(after[..., 2] - before[..., 2]).max() < 0.01  # value kept (up to uint8 rounding)
    shift = (after[..., 0] - before[..., 0]) % 1.0
    saturated = before[..., 1] > 0.3  # hue is defined (and survives rounding) only where there is colour

    def spread(shifts):  # largest circular distance from the first shift, in turns of the colour wheel
        d = np.abs(shifts - shifts[0]) % 1.0
        return float(np.minimum(d, 1 - d).max())

    bands = [shift[(labels == b) & saturated] for b in range(4)]
    assert all(spread(band) < 0.03 for band in bands)  # one angle per region ...
    assert spread(np.array([band[0] for band in bands])) > 0.05  # ... and not the same one
    assert spread(((rgb2hsv(image)[..., 0] - before[..., 0]) % 1.0)[saturated]) < 0.03  # one angle in all


def test_variant_hue_reaches_the_paintings(checkpoint):
    image = _image()
    make = lambda hue: Repaint(checkpoint[0], FelzenszwalbSegmenter(), variants=2, seed=1,  # noqa: E731
                               repaint_size=32, hue=hue)(image, "k-1", {})
    plain, region = make("none"), make("region")
    assert plain["seg.png"] == region["seg.png"] and plain["rp0.jpg"] != region["rp0.jpg"]
    assert region == make("region")
    with pytest.raises(ValueError, match="variant hue 'all': expected one of none, image, region"):
        make("all")


def test_detail_transfer_takes_fine_detail_from_the_original_and_colour_from_the_painting():
    from skimage.filters import gaussian

    from pipeline.repaint.paint import transfer_detail

    rng = np.random.default_rng(1)
    original = rng.integers(60, 200, (32, 32, 3), dtype=np.uint8)  # busy texture
    painted = np.full((32, 32, 3), (150, 90, 60), np.uint8)  # flat colour
    assert transfer_detail(painted, original, 0.0) is painted
    out = transfer_detail(painted, original, 1.0).astype(float)
    fine = lambda rgb: rgb.mean(-1) - gaussian(rgb.mean(-1), sigma=1, preserve_range=True)  # noqa: E731
    added = out - painted  # the painting is flat: it has no detail of its own to give up
    assert np.abs(added - fine(original.astype(float))[..., None]).max() <= 0.5  # the original's detail ...
    assert np.abs(out.mean((0, 1)) - painted.mean((0, 1))).max() < 2.0  # ... in the painting's colour
    half = transfer_detail(painted, original, 0.5).astype(float) - painted
    assert 0.45 < np.abs(half).mean() / np.abs(added).mean() < 0.55


def test_variant_detail_is_checked(checkpoint):
    with pytest.raises(ValueError, match="variant detail 1.5: expected a fraction in"):
        Repaint(checkpoint[0], FelzenszwalbSegmenter(), variants=1, seed=0, repaint_size=32, detail=1.5)


def test_paint_batch_gives_the_paintings_of_one_image_at_a_time(checkpoint):
    """--paint-batch: B images x N variants in one forward; each image's paintings equal those it
    gets alone after rounding to 8 bits (E and G normalise per sample, codes come from its own seeds)."""
    repaint = Repaint(checkpoint[0], FelzenszwalbSegmenter(), variants=3, seed=4, repaint_size=32)
    images = [Image.open(io.BytesIO(r.read()[0])).convert("RGB").resize((40 + 8 * i, 48))
              for i, r in enumerate(demo_source(5, 64).records)]
    items = [(image, FelzenszwalbSegmenter()(image), f"demo-{i}") for i, image in enumerate(images)]
    batched = repaint.paint_batch(items)
    alone = [repaint.paint(*item) for item in items]
    for one, many in zip(alone, batched, strict=True):
        assert len(one) == len(many) == 3
        for a, b in zip(one, many, strict=True):
            assert a.size == b.size and np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1


def test_paint_batch_shards_repeat_byte_for_byte_and_skip_unrepainted_records(checkpoint, tmp_path):
    source = demo_source(10, 48)
    settings = RecordSettings("demo", tuple(source.classes))
    repaint = Repaint(checkpoint[0], FelzenszwalbSegmenter(), variants=2, seed=0, repaint_size=32, fraction=0.5)
    (plan,) = plan_shards(10, 10)
    runs = {}
    for name, batch in (("b4", 4), ("b4-again", 4), ("b1", 1)):
        (tmp_path / name).mkdir()
        runs[name] = write_shard(plan, source.records, settings, str(tmp_path / name), "fp", repaint,
                                 paint_batch=batch)
    assert runs["b4"]["sha256"] == runs["b4-again"]["sha256"]
    assert runs["b4"]["samples"] == runs["b1"]["samples"] == 10
    read = {name: list(wds.WebDataset(str(tmp_path / name / plan.name), shardshuffle=False)) for name in ("b4", "b1")}
    repainted = [s for s in read["b4"] if "seg.png" in s]
    assert 0 < len(repainted) < 10  # --repaint-fraction 0.5 leaves some out, in the batch as alone
    for a, b in zip(read["b4"], read["b1"], strict=True):  # the same records repainted, the same label maps
        assert sorted(a) == sorted(b) and a.get("seg.png") == b.get("seg.png")


class _HalfSplit:
    """A segmenter that ignores the picture: the same two regions for every image."""

    def __call__(self, image, meta=None):
        labels = np.zeros((image.height, image.width), np.uint16)
        labels[:, image.width // 2:] = 1
        return labels


def test_edges_structure_paints_the_originals_inner_edges(tmp_path):
    """Same label map, same key, prior codes: with `segments` G sees nothing of the picture itself, so
    two pictures paint alike; with `edges` the picture's own edges reach G and their variants differ."""
    plain, striped = np.full((32, 32, 3), 90, np.uint8), np.full((32, 32, 3), 90, np.uint8)
    striped[:, ::4] = 220  # edges inside both regions, no new segment
    paintings = {}
    for structure in ("segments", "edges"):
        torch.manual_seed(0)
        cfg = RepainterConfig(label_channels=9, z_dim=4, encoder_width=8, ngf=8, spade_hidden=8, num_up=2,
                              ndf=8, keep_prob=0.0, structure=structure)
        path = tmp_path / f"{structure}.pt"
        save_repainter(path, cfg, build_encoder(cfg), build_generator(cfg), step=0)
        repaint = Repaint(path, _HalfSplit(), variants=1, seed=0, repaint_size=32)
        assert repaint.cfg.structure == structure  # the checkpoint says how its inputs are made
        paintings[structure] = [repaint(Image.fromarray(p), "k-1", {})["rp0.jpg"] for p in (plain, striped)]
    assert paintings["segments"][0] == paintings["segments"][1]
    assert paintings["edges"][0] != paintings["edges"][1]
