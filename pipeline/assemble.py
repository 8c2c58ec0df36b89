"""Assemble the manifest (written last) from the shards' done-records."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
from collections import Counter
from pathlib import Path

from manifests.contract import FORMAT_NAME, FORMAT_VERSION, SEED_RULE
from manifests.manifest import dumps_canonical

from .job_config import GenerateConfig
from .sources import Source

PACKAGES = ("numpy", "pillow", "webdataset", "ray", "torch", "torchvision", "timm",
            "scikit-image", "pycocotools")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return rev + ("+dirty" if dirty else "")


def job_fingerprint(cfg: GenerateConfig, source: Source) -> str:
    """Identifies everything that decides the shards' bytes; a resume must match it."""
    ident = {"format_version": FORMAT_VERSION, "source": source.provenance,
             "settings": cfg.output_settings()}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def build_manifest(cfg: GenerateConfig, source: Source, n_inputs: int, done: list[dict],
                   repaint_info: dict | None = None) -> dict:
    done = sorted(done, key=lambda d: d["index"])
    skipped = [s for d in done for s in d["skipped"]]
    conversions: Counter = Counter()
    for d in done:
        conversions.update(d["conversions"])
    samples = sum(d["samples"] for d in done)
    if samples + len(skipped) != n_inputs:
        raise RuntimeError(f"accounting error: {samples} written + {len(skipped)} skipped "
                           f"!= {n_inputs} inputs")
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "shards": [{k: d[k] for k in ("name", "bytes", "sha256", "samples", "first_key",
                                      "last_key")} for d in done],
        "totals": {"inputs": n_inputs, "samples": samples, "skipped": len(skipped),
                   "shards": len(done), "bytes": sum(d["bytes"] for d in done),
                   "boxes": sum(d["boxes"] for d in done)},
        "classes": source.classes, "categories": source.categories,
        "source": source.provenance, "skipped": skipped, "conversions": dict(conversions),
        "fields": {"original": "jpg|png", "label": "cls (classification sources)",
                   "metadata": "json", "variants": [f"rp{i}.jpg" for i in range(cfg.variants)],
                   "label_map": "seg.png (16-bit segment ids, with the variants)" if cfg.variants else None},
        **_repaint_entries(cfg, repaint_info), "variants": cfg.variants,
        "seed": cfg.seed, "seed_rule": SEED_RULE, "config": cfg.output_settings(),
        "provenance": {"packages": package_versions(), "git_revision": git_revision()},
        "preview": None,
    }


def _repaint_entries(cfg: GenerateConfig, info: dict | None) -> dict:
    if not cfg.variants or info is None:
        return {"segmenter": None, "repainter": None}
    segmenter = cfg.segmentation
    return {
        "segmenter": {"name": segmenter.name, "params": segmenter.params},
        "repainter": {"sha256": info["sha256"], "step": info["step"], "config": info["config"],
                      "trained_by_this_job": info["trained_by_this_job"], "training": info.get("training"),
                      "style_bank": info.get("style_bank", 0),
                      "repaint_size": cfg.repaint_size, "repaint_fraction": cfg.repaint_fraction,
                      "variant_latent": cfg.variant_latent, "region_keep_prob": cfg.region_keep_prob,
                      "variant_hue": cfg.variant_hue, "variant_detail": cfg.variant_detail,
                      "file": "repainter/repainter.pt" if info["trained_by_this_job"] else None},
    }


TIMM_INFO_NAME = "_info.json"


def timm_info(manifest: dict) -> bytes:
    """`_info.json` in timm's wds layout, so `timm` reads the set with `--dataset wds/...`."""
    shards = manifest["shards"]
    info = {"name": manifest["source"]["kind"], "splits": {"train": {
        "name": "train", "num_samples": manifest["totals"]["samples"],
        "filenames": [s["name"] for s in shards], "shard_lengths": [s["samples"] for s in shards],
    }}}
    return dumps_canonical(info).encode()
