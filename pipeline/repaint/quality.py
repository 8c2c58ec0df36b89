"""Do the variants keep the shapes and change the colours? The measures the job records in the
manifest and `bench/measure_repaint.py` computes on a finished shard set.

Against the boundaries of the label map the variants were painted from:
- boundary F-score at matched density: an image's edges are its k strongest Sobel pixels, k = the
  number of boundary pixels (a noisy image cannot score by having edges everywhere), matched within
  a tolerance of 0.75 % of the diagonal (BSDS convention, at least 1 px);
- edge contrast: mean Sobel magnitude on boundary pixels / off them (1.0: edges ignore the layout).
Scores come for the variants, the original itself (the ceiling) and an unrelated original (the
floor); `gap_closed` = (variant - unrelated) / (original - unrelated).
- colour distance: mean per-pixel RGB distance (0-255) of a variant to its original and between two
  variants of one image (do new seeds give new colours?).
"""

from __future__ import annotations

import numpy as np
from skimage.filters import sobel
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries


def boundary_f(edges: np.ndarray, boundaries: np.ndarray, tolerance: int) -> float:
    near_boundary = dilation(boundaries, disk(tolerance))
    near_edge = dilation(edges, disk(tolerance))
    precision = (edges & near_boundary).sum() / max(1, edges.sum())
    recall = (boundaries & near_edge).sum() / max(1, boundaries.sum())
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def _strongest(magnitude: np.ndarray, k: int) -> np.ndarray:
    """The k strongest pixels (ties broken by position, so the count is exact)."""
    edges = np.zeros(magnitude.size, bool)
    edges[np.argsort(-magnitude.ravel(), kind="stable")[:k]] = True
    return edges.reshape(magnitude.shape)


def edge_scores(rgb: np.ndarray, boundaries: np.ndarray, tolerance: int) -> tuple[float, float]:
    """(boundary F, edge contrast) of an RGB image (float, 0-255) against boolean boundaries."""
    magnitude = sobel(rgb.mean(-1) / 255.0)
    contrast = magnitude[boundaries].mean() / max(magnitude[~boundaries].mean(), 1e-9)
    return boundary_f(_strongest(magnitude, int(boundaries.sum())), boundaries, tolerance), float(contrast)


def colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float32) - b.astype(np.float32), axis=-1).mean())


def measure_variants(originals: np.ndarray, variants: np.ndarray, label_maps: np.ndarray) -> dict:
    """originals uint8 [N, S, S, 3], variants uint8 [N, V, S, S, 3] (V >= 2), label maps [N, S, S]:
    the figures above, averaged over the images whose map has a boundary."""
    n, size = len(originals), originals.shape[1]
    tolerance = max(1, round(0.0075 * size * 2**0.5))
    rows: dict[str, list[tuple[float, float]]] = {"variant": [], "original": [], "unrelated_original": []}
    colour: dict[str, list[float]] = {"variant_vs_original": [], "variant_vs_variant": []}
    for i in range(n):
        boundaries = find_boundaries(label_maps[i], mode="inner")
        if not boundaries.any() or boundaries.all():
            continue
        unrelated = originals[(i + n // 2) % n]
        for row, images in (("original", [originals[i]]), ("unrelated_original", [unrelated]),
                            ("variant", list(variants[i]))):
            rows[row] += [edge_scores(np.asarray(x, np.float32), boundaries, tolerance) for x in images]
        colour["variant_vs_original"] += [colour_distance(v, originals[i]) for v in variants[i]]
        colour["variant_vs_variant"] += [colour_distance(a, b) for j, a in enumerate(variants[i])
                                         for b in variants[i][j + 1:]]
    if not rows["variant"]:
        return {"images": 0}
    f = {k: float(np.mean([s[0] for s in v])) for k, v in rows.items()}
    gap = f["original"] - f["unrelated_original"]
    return {"images": len(rows["original"]), "size": size, "tolerance_px": tolerance, "boundary_f": f,
            "boundary_f_gap_closed": (f["variant"] - f["unrelated_original"]) / gap if gap > 0 else None,
            "edge_contrast": {k: float(np.mean([s[1] for s in v])) for k, v in rows.items()},
            "colour_distance": {k: float(np.mean(v)) for k, v in colour.items()}}


def code_spread(generator, labels, seed: int = 0) -> float:
    """Mean per-pixel colour distance (0-255) between two paintings of the same label maps from two
    prior draws: 0 for a generator that ignores its codes (then every variant is the same image)."""
    import torch

    from .nets import draw_prior

    shape = (labels.shape[0], labels.shape[1] - 1, generator.z_dim)
    draws = [draw_prior(shape, torch.Generator().manual_seed(seed + i)).to(labels.device) for i in (0, 1)]
    mode = generator.training
    generator.eval()  # in train mode spectral norm's power iteration moves between the two calls
    with torch.no_grad():
        a, b = (generator(z, labels) for z in draws)
    generator.train(mode)
    return float(((a - b) * 127.5).norm(dim=1).mean())


QUALITY_LIMIT = 64  # repainted samples measured; up to 4x as many samples are read to find them


def measure_shards(urls: list[str], size: int, limit: int = QUALITY_LIMIT) -> dict:
    """`measure_variants` on the first `limit` repainted samples of written shards, read back with
    webdataset (what the shards hold: resized to the stored size, JPEG-encoded), at `size` x `size`
    (label maps by nearest, images by bicubic)."""
    import itertools

    import webdataset as wds
    from PIL import Image

    from manifests import decode_image
    from manifests.imageio import decode_label_map

    def rgb(data: bytes) -> np.ndarray:
        image = decode_image(data, "measure").image.convert("RGB")
        return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), np.uint8)

    samples = [s for s in itertools.islice(wds.WebDataset(urls, shardshuffle=False), limit * 4)
               if "seg.png" in s][:limit]
    variants = sorted(k for k in (samples[0] if samples else {}) if k.startswith("rp"))
    if len(samples) < 2 or len(variants) < 2:
        return {"images": 0, "note": "needs at least 2 repainted samples with 2 variants each"}
    originals = np.stack([rgb(s["jpg"] if "jpg" in s else s["png"]) for s in samples])
    painted = np.stack([np.stack([rgb(s[v]) for v in variants]) for s in samples])
    maps = np.stack([np.asarray(Image.fromarray(decode_label_map(s["seg.png"], "seg.png")).resize(
        (size, size), Image.Resampling.NEAREST)) for s in samples])
    return measure_variants(originals, painted, maps)
