"""Does a shard set's repainting keep shapes and change textures? Measured on what the shards hold.

    python bench/measure_repaint.py SHARD_DIR [--size 64] [--limit 500]

Per sample, at `--size` (the label map by nearest, images by bicubic), against the boundaries of
the stored label map (`seg.png`, the layout G was given):
- boundary F-score at matched density: an image's edges are its k strongest Sobel pixels, k = the
  number of boundary pixels (so a noisy image cannot score by having edges everywhere), matched
  within a tolerance of 0.75 % of the diagonal (BSDS convention, at least 1 px);
- edge contrast: mean Sobel magnitude on boundary pixels / off them (1.0: edges ignore the layout).
Rows: each variant; the original itself (the ceiling); an unrelated original and an unrelated
variant (random images: the floor).
- colour distance: mean per-pixel RGB distance (0-255 scale) of variant vs original, of two
  variants of the same image vs each other, and (for scale) of two unrelated originals.
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
from skimage.filters import sobel
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from manifests import decode_image, read_manifest  # noqa: E402
from manifests.imageio import decode_label_map  # noqa: E402


def boundary_f(edges: np.ndarray, boundaries: np.ndarray, tolerance: int) -> float:
    near_boundary = dilation(boundaries, disk(tolerance))
    near_edge = dilation(edges, disk(tolerance))
    precision = (edges & near_boundary).sum() / max(1, edges.sum())
    recall = (boundaries & near_edge).sum() / max(1, boundaries.sum())
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def _rgb(data: bytes, size: int) -> np.ndarray:
    image = decode_image(data, "measure").image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, np.float32)


def _magnitude(rgb: np.ndarray) -> np.ndarray:
    return sobel(rgb.mean(-1) / 255.0)


def _edges(magnitude: np.ndarray, k: int) -> np.ndarray:
    """The k strongest pixels (ties broken by position, so the count is exact)."""
    edges = np.zeros(magnitude.size, bool)
    edges[np.argsort(-magnitude.ravel(), kind="stable")[:k]] = True
    return edges.reshape(magnitude.shape)


def _scores(rgb: np.ndarray, boundaries: np.ndarray, tolerance: int) -> tuple[float, float]:
    magnitude = _magnitude(rgb)
    contrast = magnitude[boundaries].mean() / max(magnitude[~boundaries].mean(), 1e-9)
    return boundary_f(_edges(magnitude, int(boundaries.sum())), boundaries, tolerance), float(contrast)


def measure(shard_dir: Path, size: int, limit: int) -> dict:
    urls = sorted(str(p) for p in shard_dir.glob("shard-*.tar"))
    samples = [s for s in wds.WebDataset(urls, shardshuffle=False) if "seg.png" in s][:limit]
    if len(samples) < 2:
        raise SystemExit(f"{shard_dir}: fewer than 2 repainted samples")
    variants = sorted(k for k in samples[0] if k.startswith("rp"))
    tolerance = max(1, round(0.0075 * size * 2**0.5))
    rows = ("variant", "original", "unrelated_original", "unrelated_variant")
    f_scores: dict[str, list[float]] = {k: [] for k in rows}
    contrast: dict[str, list[float]] = {k: [] for k in rows}
    colour: dict[str, list[float]] = {"variant_vs_original": [], "variant_vs_variant": [],
                                      "original_vs_unrelated_original": []}
    for i, s in enumerate(samples):
        labels = np.asarray(Image.fromarray(decode_label_map(s["seg.png"], "seg")).resize((size, size), 0))
        boundaries = find_boundaries(labels, mode="inner")
        if not boundaries.any() or boundaries.all():
            continue
        original = _rgb(s["jpg"] if "jpg" in s else s["png"], size)
        painted = [_rgb(s[v], size) for v in variants]
        other = samples[(i + len(samples) // 2) % len(samples)]
        images = {"original": [original], "variant": painted,
                  "unrelated_original": [_rgb(other["jpg"] if "jpg" in other else other["png"], size)],
                  "unrelated_variant": [_rgb(other[variants[0]], size)]}
        for row, rgbs in images.items():
            for rgb in rgbs:
                f, c = _scores(rgb, boundaries, tolerance)
                f_scores[row].append(f)
                contrast[row].append(c)
        colour["original_vs_unrelated_original"].append(
            float(np.linalg.norm(images["unrelated_original"][0] - original, axis=-1).mean()))
        colour["variant_vs_original"] += [float(np.linalg.norm(p - original, axis=-1).mean()) for p in painted]
        colour["variant_vs_variant"] += [float(np.linalg.norm(a - b, axis=-1).mean())
                                         for j, a in enumerate(painted) for b in painted[j + 1:]]
    manifest = read_manifest(shard_dir)
    return {"samples": len(samples), "variants": len(variants), "size": size, "tolerance_px": tolerance,
            "boundary_f": {k: float(np.mean(v)) for k, v in f_scores.items()},
            "edge_contrast": {k: float(np.mean(v)) for k, v in contrast.items()},
            "colour_distance": {k: float(np.mean(v)) if v else None for k, v in colour.items()},
            "repainter_metrics": ((manifest.get("repainter") or {}).get("training") or {}).get("metrics")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("shards", type=Path)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--limit", type=int, default=500)
    args = p.parse_args()
    result = measure(args.shards, args.size, args.limit)
    print(json.dumps(result, indent=1))
    for name in ("boundary_f", "edge_contrast"):
        v = result[name]
        print(f"{name}: variants {v['variant']:.3f} vs unrelated original {v['unrelated_original']:.3f} "
              f"(x{v['variant'] / max(v['unrelated_original'], 1e-9):.2f}) and unrelated variant "
              f"{v['unrelated_variant']:.3f}; the original itself {v['original']:.3f}")


if __name__ == "__main__":
    main()
