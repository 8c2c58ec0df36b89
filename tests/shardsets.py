"""Small shard sets for the trainer's tests, written with the pipeline's own functions (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import ImageOps

from manifests import encode_image, write_manifest
from pipeline.assemble import build_manifest
from pipeline.job_config import GenerateConfig
from pipeline.records import RecordSettings
from pipeline.shards import write_shard_set
from pipeline.sources import demo_source


def _fake_repaint(variants: int):
    """Stand-in variants (inverted / posterized colours): enough to exercise variant choice."""
    def repaint(image, key, meta):
        out = {}
        for v in range(variants):
            painted = ImageOps.invert(image) if v % 2 == 0 else ImageOps.posterize(image, 2)
            out[f"rp{v}.jpg"] = encode_image(painted.convert("RGB"), "jpg")
        return out
    return repaint if variants else None


def make_shard_set(out: Path, count: int, per_shard: int, size: int = 32, variants: int = 0) -> Path:
    source = demo_source(count, max(size, 32))
    settings = RecordSettings(key_prefix="demo", class_names=tuple(source.classes))
    done = write_shard_set(source, out, per_shard, settings, repaint=_fake_repaint(variants))
    cfg = GenerateConfig(source=f"demo:{count}:{size}", out=str(out), samples_per_shard=per_shard, variants=0)
    manifest = build_manifest(cfg, source, count, done)
    manifest["variants"] = variants
    write_manifest(out, manifest)
    return out


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())
