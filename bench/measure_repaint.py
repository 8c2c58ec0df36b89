"""Does a shard set's repainting keep shapes and change textures? Measured on what the shards hold.

    python bench/measure_repaint.py SHARD_DIR [--size 64] [--limit 500]

Per sample, at `--size` (the label map by nearest, images by bicubic):
- boundary F-score: Canny edges of an image against the boundaries of the stored label map
  (`seg.png`, the layout G was given), matched within a tolerance of 0.75 % of the diagonal
  (BSDS convention, at least 1 px). Rows: each variant; the original itself (the ceiling); another
  sample's variant (a random image with the same statistics: the floor).
- colour distance: mean per-pixel RGB distance (0-255 scale) of variant vs original, and of two
  variants of the same image vs each other.
Also prints the repainter's training metrics from the manifest (proxy-task accuracy on held-out real
and painted images).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from skimage.feature import canny
from skimage.morphology import binary_dilation, disk
from skimage.segmentation import find_boundaries

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from manifests import decode_image, read_manifest  # noqa: E402
from manifests.imageio import decode_label_map  # noqa: E402


def boundary_f(edges: np.ndarray, boundaries: np.ndarray, tolerance: int) -> float:
    near_boundary = binary_dilation(boundaries, disk(tolerance))
    near_edge = binary_dilation(edges, disk(tolerance))
    precision = (edges & near_boundary).sum() / max(1, edges.sum())
    recall = (boundaries & near_edge).sum() / max(1, boundaries.sum())
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def _rgb(data: bytes, size: int) -> np.ndarray:
    image = decode_image(data, "measure").image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, np.float32)


def _edges(rgb: np.ndarray) -> np.ndarray:
    return canny(rgb.mean(-1) / 255.0, sigma=1.0)


def measure(shard_dir: Path, size: int, limit: int) -> dict:
    urls = sorted(str(p) for p in shard_dir.glob("shard-*.tar"))
    samples = [s for s in wds.WebDataset(urls, shardshuffle=False) if "seg.png" in s][:limit]
    if len(samples) < 2:
        raise SystemExit(f"{shard_dir}: fewer than 2 repainted samples")
    variants = sorted(k for k in samples[0] if k.startswith("rp"))
    tolerance = max(1, round(0.0075 * size * 2**0.5))
    scores: dict[str, list[float]] = {"variant": [], "original": [], "random_image": []}
    colour: dict[str, list[float]] = {"variant_vs_original": [], "variant_vs_variant": []}
    for i, s in enumerate(samples):
        labels = np.asarray(Image.fromarray(decode_label_map(s["seg.png"], "seg")).resize((size, size), 0))
        boundaries = find_boundaries(labels, mode="inner")
        original = _rgb(s["jpg"] if "jpg" in s else s["png"], size)
        painted = [_rgb(s[v], size) for v in variants]
        other = _rgb(samples[(i + len(samples) // 2) % len(samples)][variants[0]], size)
        scores["original"].append(boundary_f(_edges(original), boundaries, tolerance))
        scores["variant"] += [boundary_f(_edges(p), boundaries, tolerance) for p in painted]
        scores["random_image"].append(boundary_f(_edges(other), boundaries, tolerance))
        colour["variant_vs_original"] += [float(np.linalg.norm(p - original, axis=-1).mean()) for p in painted]
        colour["variant_vs_variant"] += [float(np.linalg.norm(a - b, axis=-1).mean())
                                         for j, a in enumerate(painted) for b in painted[j + 1:]]
    manifest = read_manifest(shard_dir)
    return {"samples": len(samples), "variants": len(variants), "size": size, "tolerance_px": tolerance,
            "boundary_f": {k: float(np.mean(v)) for k, v in scores.items()},
            "colour_distance": {k: float(np.mean(v)) if v else None for k, v in colour.items()},
            "repainter_metrics": (manifest.get("repainter") or {}).get("training", {}).get("metrics")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("shards", type=Path)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--limit", type=int, default=500)
    args = p.parse_args()
    result = measure(args.shards, args.size, args.limit)
    print(json.dumps(result, indent=1))
    f = result["boundary_f"]
    print(f"boundary F: variants {f['variant']:.3f} vs random image {f['random_image']:.3f} "
          f"(ratio {f['variant'] / max(f['random_image'], 1e-9):.2f}x); original itself {f['original']:.3f}")


if __name__ == "__main__":
    main()
